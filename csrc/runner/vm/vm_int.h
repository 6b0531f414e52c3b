/* vm_int.h - what the VM monitor's files share (vm/ only). */
#ifndef SL_VM_INT_H
#define SL_VM_INT_H

#include <stddef.h>
#include <sys/types.h>

#include "sl_vm.h"

/* A QMP connection (blocking, one command at a time). */
typedef struct sl_qmp {
    int fd;
    size_t len;
    char buf[16384];
} sl_qmp;

/* Connect to QEMU's QMP socket (retrying while QEMU creates it, up to
 * timeout seconds), read the greeting, enter command mode. 0 or -errno. */
int sl__qmp_connect(sl_qmp *q, const char *path, double timeout);
/* Run one command (a JSON object text); pass_fd >= 0 goes along as
 * SCM_RIGHTS (for getfd). 0 on a "return" (its text in out), -EIO on an
 * "error" (its description in out), other -errno on I/O failure. */
int sl__qmp_cmd(sl_qmp *q, const char *json, int pass_fd, char *out, size_t cap, double timeout);
void sl__qmp_close(sl_qmp *q);

/* Paths of one VM's files inside cfg->dir. */
#define VM_QMP "qmp.sock"
#define VM_PORT "port.sock"
#define VM_CONSOLE "console.log"
/* The running VM's RAM file: /dev/shm/sandlot-vm-<id>.ram (tmpfs, so guest
 * writes never become disk writeback); removed when the monitor ends. */
int sl__vm_ram_path(const char *id, char *out, size_t cap);

/* Start QEMU for cfg, its RAM in ram_path (share=on; a cold boot), or mapped
 * private from cfg->restore_dir/ram with the device state on incoming_fd.
 * Returns its pid or -errno (message in err). */
pid_t sl__vm_qemu_start(const sl_vm_config *cfg, const char *ram_path, int incoming_fd, char *err,
                        size_t errlen);

/* Snapshot files inside a snapshot's directory. */
#define VM_SNAP_RAM "ram"
#define VM_SNAP_STATE "state"
#define VM_SNAP_CONF "vm.conf" /* "mem_mb vcpus rw_mb\nroot_image\n" */

/* Copy src to dst keeping holes (SEEK_DATA/SEEK_HOLE + copy_file_range), so
 * untouched guest RAM takes no space. Returns bytes of data copied or -errno. */
long long sl__vm_copy_sparse(const char *src, const char *dst);

#endif
