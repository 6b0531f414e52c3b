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
/* Most fds one message carries (SPAWN: stdin, stdout, stderr). */
#define SL_CTL_MAX_FDS 3

enum sl_ctl_type {
    SL_CTL_READY = 1,        /* init -> runner: namespaces and mounts done */
    SL_CTL_SPAWN = 2,        /* runner -> init: start a process (fds: in, out, err) */
    SL_CTL_STARTED = 3,      /* init -> runner: arg = pid inside the sandbox */
    SL_CTL_SPAWN_FAILED = 4, /* init -> runner: arg = errno, payload = what failed */
    SL_CTL_EXITED = 5,       /* init -> runner: arg = raw wait status */
    SL_CTL_SIGNAL = 6,       /* runner -> init: arg = signal for process id's group */
    SL_CTL_SECCOMP = 7,      /* runner -> init: arg = instruction count, payload = that many
                                struct sock_filter; applied to every later SPAWN */
};

/* Most instructions one seccomp program may have (the kernel's BPF_MAXINSNS). */
#define SL_CTL_MAX_FILTER 4096

typedef struct sl_ctl_hdr {
    uint32_t type;
    uint32_t id;  /* process id (0 = entry command) */
    uint32_t arg; /* meaning depends on type */
} sl_ctl_hdr;

/* Send one message with an optional payload and up to 3 fds. Returns 0 or -errno. */
int sl_ctl_send(int sock, const sl_ctl_hdr *hdr, const void *payload, size_t len, const int *fds,
                int nfds);

/* Receive one message: the header into *hdr, the payload into buf (cap bytes;
 * buf may be NULL when cap is 0). Received fds (O_CLOEXEC) are stored in
 * fds[0..*nfds) (caller passes capacity in *nfds; nfds may be NULL for none).
 * Returns payload length >= 0, -EPIPE on EOF, or -errno (-EAGAIN on a
 * non-blocking socket with nothing queued). Messages that are truncated,
 * shorter than a header, or carry more fds than asked for are rejected
 * (-EBADMSG) with any received fds closed. */
int sl_ctl_recv(int sock, sl_ctl_hdr *hdr, void *buf, size_t cap, int *fds, int *nfds);

/* Build a SPAWN payload. Layout (all strings NUL-terminated):
 *   cwd, argc as decimal, argv[0] .. argv[argc-1], env "K=V" ...
 * The explicit argc keeps empty argv elements ("") unambiguous. Returns the
 * length written, -EINVAL without argv[0], or -E2BIG if it does not fit in cap.
 * cwd may be NULL ("" is sent, meaning "/"); envp may be NULL. */
long sl_ctl_pack_spawn(char *buf, size_t cap, const char *cwd, const char *const *argv,
                       const char *const *envp);

/* A parsed SPAWN payload; the strings point into the payload buffer. */
typedef struct sl_ctl_spawn_req {
    const char *cwd; /* "" means "/" */
    char **argv;     /* NULL-terminated, argv[0] present */
    char **envp;     /* NULL-terminated, may be empty */
    char **vec;      /* malloc'd storage behind argv and envp */
} sl_ctl_spawn_req;

/* Parse a SPAWN payload of len bytes (it must end with a NUL). Returns 0,
 * -EBADMSG if malformed, or -ENOMEM. Free with sl_ctl_spawn_req_free. */
int sl_ctl_unpack_spawn(char *buf, size_t len, sl_ctl_spawn_req *req);
void sl_ctl_spawn_req_free(sl_ctl_spawn_req *req);

#endif
