/* sl_vmframe.c - framing helpers shared by the VM monitor and sandlot-vminit. */
#include "sl_vmframe.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void sl_vm_hdr_put(unsigned char out[SL_VM_HDR], const sl_vm_hdr *h)
{
    put32(out, h->type);
    put32(out + 4, h->id);
    put32(out + 8, h->arg);
    put32(out + 12, h->len);
}

void sl_vm_hdr_get(const unsigned char in[SL_VM_HDR], sl_vm_hdr *h)
{
    h->type = get32(in);
    h->id = get32(in + 4);
    h->arg = get32(in + 8);
    h->len = get32(in + 12);
}

int sl_vm_send(int fd, uint32_t type, uint32_t id, uint32_t arg, const void *payload, size_t len)
{
    if (len > SL_VM_MAX_PAYLOAD)
        return -E2BIG;
    unsigned char hdr[SL_VM_HDR];
    sl_vm_hdr h = {type, id, arg, (uint32_t)len};
    sl_vm_hdr_put(hdr, &h);
    struct iovec iov[2] = {{hdr, SL_VM_HDR}, {(void *)payload, len}};
    int n = len > 0 ? 2 : 1;
    struct iovec *v = iov;
    while (n > 0) {
        ssize_t w = writev(fd, v, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        /* Advance over what was written: a pipe or socket may take part. */
        while (n > 0 && (size_t)w >= v->iov_len) {
            w -= (ssize_t)v->iov_len;
            v++;
            n--;
        }
        if (n > 0) {
            v->iov_base = (char *)v->iov_base + w;
            v->iov_len -= (size_t)w;
        }
    }
    return 0;
}

long sl_vm_rx_fill(sl_vm_rx *rx, int fd)
{
    if (rx->cap - rx->len < 65536) {
        size_t ncap = rx->cap ? rx->cap * 2 : 131072;
        /* A frame is at most header + SL_VM_MAX_PAYLOAD; more than two of them
         * buffered means the peer floods us faster than we parse: stop reading. */
        if (ncap > 4 * (SL_VM_HDR + SL_VM_MAX_PAYLOAD))
            ncap = 4 * (SL_VM_HDR + SL_VM_MAX_PAYLOAD);
        if (ncap > rx->cap) {
            unsigned char *nb = realloc(rx->buf, ncap);
            if (nb == NULL)
                return -ENOMEM;
            rx->buf = nb;
            rx->cap = ncap;
        }
        if (rx->cap == rx->len)
            return -ENOBUFS;
    }
    ssize_t r;
    do
        r = read(fd, rx->buf + rx->len, rx->cap - rx->len);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    rx->len += (size_t)r;
    return (long)r;
}

int sl_vm_rx_next(sl_vm_rx *rx, sl_vm_hdr *h, const unsigned char **payload)
{
    if (rx->len < SL_VM_HDR)
        return 0;
    sl_vm_hdr_get(rx->buf, h);
    if (h->len > SL_VM_MAX_PAYLOAD)
        return -EBADMSG;
    if (rx->len < SL_VM_HDR + (size_t)h->len)
        return 0;
    *payload = rx->buf + SL_VM_HDR;
    return 1;
}

void sl_vm_rx_drop(sl_vm_rx *rx)
{
    sl_vm_hdr h;
    if (rx->len < SL_VM_HDR)
        return;
    sl_vm_hdr_get(rx->buf, &h);
    size_t n = SL_VM_HDR + (size_t)h.len;
    if (n > rx->len)
        n = rx->len;
    memmove(rx->buf, rx->buf + n, rx->len - n);
    rx->len -= n;
}

void sl_vm_rx_reset(sl_vm_rx *rx)
{
    rx->len = 0;
}

void sl_vm_rx_free(sl_vm_rx *rx)
{
    free(rx->buf);
    rx->buf = NULL;
    rx->len = rx->cap = 0;
}
