/* vm_mon.h - the VM monitor's state, shared by vm_monitor.c and vm_snap.c. */
#ifndef SL_VM_MON_H
#define SL_VM_MON_H

#include <stdint.h>
#include <sys/types.h>

#include "sl_vmframe.h"
#include "vm_int.h"

#define MON_MAXP 256
/* Cold boot to the guest's READY (TCG boots take seconds, KVM well under one). */
#define SL_VM_BOOT_TIMEOUT 170.0

typedef struct mproc {
    int used;
    uint32_t id;
    int in, out, err; /* runner's pipes: we read in, write out/err */
} mproc;

typedef struct sl_mon {
    const sl_vm_config *cfg;
    int ctl, port, sfd;
    pid_t qemu;
    sl_qmp qmp;
    sl_vm_rx rx;
    int ready;       /* guest said READY (or answered HELLO after a resume) */
    int resync;      /* resumed: drop port bytes up to the HELLO marker */
    int restored;    /* RAM is a private map of a snapshot (no share=on file) */
    uint32_t synced; /* last SYNC answered */
    char ram[256];   /* the RAM file of a cold-booted VM ("" for a resumed one) */
    int ram_fd;      /* the RAM file, open; its name is unlinked once QEMU mapped it */
    char why[512];   /* the last thing that went wrong (sent as SL_CTL_VM_FAILED) */
    char *msg;       /* SL_CTL_MAX_MSG bytes */
    unsigned char io[65536];
    mproc procs[MON_MAXP];
} sl_mon;

void sl__mon_ctl_send(sl_mon *m, uint32_t type, uint32_t id, uint32_t arg, const void *p, size_t n);
int sl__mon_send(sl_mon *m, uint32_t type, uint32_t id, uint32_t arg, const void *p, size_t n);
void sl__mon_frame(sl_mon *m, const sl_vm_hdr *h, const unsigned char *p);
int sl__mon_on_port(sl_mon *m);
/* Poll query-migrate until completed (0) or failed / timeout (-1, why in out). */
int sl__mon_wait_migration(sl_mon *m, double timeout, char *out, size_t cap);
/* Take a memory snapshot into dir; answers SL_CTL_VM_SNAPSHOT_DONE. */
void sl__mon_snapshot(sl_mon *m, const char *dir);

#endif
