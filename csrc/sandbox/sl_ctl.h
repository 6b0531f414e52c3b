/* sl_ctl.h - the control channel between sandlotd and sandlot-init.
 *
 * A SOCK_SEQPACKET socketpair: one send() is one message, so no framing code.
 * Each message is a sl_ctl_hdr followed by an optional payload; SPAWN carries
 * the three stdio fds as SCM_RIGHTS. See docs/protocol.md section 2.
 */
#ifndef SL_CTL_H
#define SL_CTL_H

#include <stddef.h>
#include <stdint.h>

/* Largest control message (header + payload). Argv + env of one spawn must fit. */
#define SL_CTL_MAX_MSG (256 * 1024)
/* The fd number sandlot-init finds the channel on. */
#define SL_CTL_FD 3

enum sl_ctl_type {
    SL_CTL_READY = 1,        /* init -> runner: namespaces and mounts done */
    SL_CTL_SPAWN = 2,        /* runner -> init: start a process (fds: in, out, err) */
    SL_CTL_STARTED = 3,      /* init -> runner: arg = pid inside the sandbox */
    SL_CTL_SPAWN_FAILED = 4, /* init -> runner: arg = errno, payload = what failed */
    SL_CTL_EXITED = 5,       /* init -> runner: arg = raw wait status */
    SL_CTL_SIGNAL = 6,       /* runner -> init: arg = signal for process id's group */
};

typedef struct sl_ctl_hdr {
    uint32_t type;
    uint32_t id;  /* process id (0 = entry command) */
    uint32_t arg; /* meaning depends on type */
} sl_ctl_hdr;

/* Send one message with an optional payload and up to 3 fds. Returns 0 or -errno. */
int sl_ctl_send(int sock, const sl_ctl_hdr *hdr, const void *payload, size_t len, const int *fds,
                int nfds);

/* Receive one message into buf (cap bytes, must be >= sizeof(sl_ctl_hdr)).
 * Received fds (O_CLOEXEC) are stored in fds[0..*nfds) (caller passes capacity
 * in *nfds). Returns payload length >= 0, -EPIPE on EOF, or -errno. Messages
 * that are truncated or carry more fds than asked for are rejected (-EBADMSG)
 * with any received fds closed. */
int sl_ctl_recv(int sock, sl_ctl_hdr *hdr, void *buf, size_t cap, int *fds, int *nfds);

/* Build a SPAWN payload: cwd\0 argv[0]\0 ... \0 \0 env[0]\0 ... Returns the length
 * written, or -E2BIG if it does not fit in cap. cwd may be NULL ("" is sent,
 * meaning "/"). */
long sl_ctl_pack_spawn(char *buf, size_t cap, const char *cwd, const char *const *argv,
                       const char *const *envp);

#endif
