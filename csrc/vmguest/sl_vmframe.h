/* sl_vmframe.h - the byte-stream framing between the runner's VM monitor and
 * sandlot-vminit (pid 1 inside a microVM), over one virtio-serial port.
 *
 * The container tier's control channel is a SEQPACKET socketpair that carries
 * each process's stdio fds as SCM_RIGHTS. A virtio-serial port is a byte
 * stream and no fd crosses a VM boundary, so here every message is a 16-byte
 * header plus payload, and the stdio of every process is multiplexed over the
 * same stream as STDIN/STDOUT/STDERR frames tagged with the process id. The
 * control messages keep the numbers and meaning of sl_ctl.h (SPAWN, STARTED,
 * SPAWN_FAILED, EXITED, SIGNAL); the stream types start at 64.
 * docs/protocol.md section 2b.
 */
#ifndef SL_VMFRAME_H
#define SL_VMFRAME_H

#include <stddef.h>
#include <stdint.h>

enum sl_vm_type {
    /* 1..7: as sl_ctl_type (READY, SPAWN, STARTED, SPAWN_FAILED, EXITED, SIGNAL) */
    SL_VM_STDIN = 64,     /* host -> guest: bytes for process id's stdin */
    SL_VM_STDIN_EOF = 65, /* host -> guest: close process id's stdin */
    SL_VM_STDOUT = 66,    /* guest -> host: bytes the process wrote */
    SL_VM_STDERR = 67,
    SL_VM_OUT_EOF = 68, /* guest -> host: arg 1 = stdout, 2 = stderr reached EOF */
    SL_VM_HELLO = 69,   /* host -> guest after (re)connecting: arg 1 = resumed from a
                           snapshot: processes of the old connection keep running but
                           their stdio is detached, and their ids are freed */
    SL_VM_SYNC = 70,    /* host -> guest: arg echoed back as SL_VM_SYNCED once every
                           earlier frame was handled (snapshot quiescence) */
    SL_VM_SYNCED = 71,
};

#define SL_VM_HDR 16
#define SL_VM_MAX_PAYLOAD (256 * 1024)

typedef struct sl_vm_hdr {
    uint32_t type;
    uint32_t id;
    uint32_t arg;
    uint32_t len; /* payload bytes that follow */
} sl_vm_hdr;

/* Encode/decode a header (little endian on the wire). */
void sl_vm_hdr_put(unsigned char out[SL_VM_HDR], const sl_vm_hdr *h);
void sl_vm_hdr_get(const unsigned char in[SL_VM_HDR], sl_vm_hdr *h);

/* Write one frame completely to a blocking fd (retries on EINTR and short
 * writes). Returns 0 or -errno. */
int sl_vm_send(int fd, uint32_t type, uint32_t id, uint32_t arg, const void *payload, size_t len);

/* A reassembly buffer for the receiving side: feed it what read() returned
 * and take whole frames out. */
typedef struct sl_vm_rx {
    unsigned char *buf;
    size_t len, cap;
} sl_vm_rx;

/* Read what is available from fd into rx. Returns bytes read, 0 on EOF, or
 * -errno (-EAGAIN on a non-blocking fd with nothing to read). */
long sl_vm_rx_fill(sl_vm_rx *rx, int fd);
/* Peek at the next whole frame: 1 with *h and *payload (valid until
 * sl_vm_rx_drop or the next fill), 0 if none is complete yet, -EBADMSG if the
 * stream is corrupt. */
int sl_vm_rx_next(sl_vm_rx *rx, sl_vm_hdr *h, const unsigned char **payload);
void sl_vm_rx_drop(sl_vm_rx *rx);  /* consume the frame sl_vm_rx_next returned */
void sl_vm_rx_reset(sl_vm_rx *rx); /* drop everything buffered (new connection) */
void sl_vm_rx_free(sl_vm_rx *rx);

#endif
