/* sl_vm.h - the microVM tier: sandboxes that are QEMU `microvm` guests.
 *
 * A microVM sandbox looks like any other to the rest of the runner: it has an
 * sl_sandbox whose init_pid is a *VM monitor* process (forked from the
 * runner, vm_monitor.c) and whose ctl_fd speaks the container tier's control
 * protocol (sl_ctl.h, SCM_RIGHTS stdio fds included). The monitor starts and
 * confines QEMU (vm_qemu.c), drives it over QMP (vm_qmp.c), and relays
 * between the control channel and the guest's pid 1 (sandlot-vminit) over a
 * virtio-serial port, multiplexing each process's stdio as frames
 * (sl_vmframe.h). Killing the sandbox's cgroup kills monitor and QEMU; QEMU
 * ending (guest poweroff, panic, kill) ends the monitor, which the runner
 * reaps like a container's init. docs/architecture.md, "MicroVM tier".
 */
#ifndef SL_VM_H
#define SL_VM_H

#include <stddef.h>

#include "sl_sandbox.h"

/* Runner -> monitor: take a memory snapshot into the directory named by the
 * payload (it exists and is empty). Monitor -> runner: SNAPSHOT_DONE with
 * arg 0 and the size in bytes as decimal text, or arg = errno and a message.
 * Numbered after sl_ctl_type's so the two never collide. */
#define SL_CTL_VM_SNAPSHOT 32
#define SL_CTL_VM_SNAPSHOT_DONE 33
/* Monitor -> runner, just before it exits without the guest having come up
 * (or a resume failed): the payload says why, for the create's error. */
#define SL_CTL_VM_FAILED 34

typedef struct sl_vm_config {
    const char *id;            /* sandbox id: hostname in the guest */
    const char *dir;           /* per-sandbox dir (sockets, console log) */
    const char *guest_dir;     /* vmlinuz, initrd.img, hostroot.erofs */
    const char *root_image;    /* read-only root disk (EROFS) */
    const char *restore_dir;   /* memory snapshot to resume, or NULL for a cold boot */
    const char *accel;         /* "kvm" or "tcg" */
    const char *qemu;          /* qemu-system-x86_64 path */
    unsigned vcpus;            /* 1..16 */
    unsigned long long mem_mb; /* guest RAM */
    unsigned long long rw_mb;  /* tmpfs writable layer size inside the guest */
    unsigned long tsc_khz;     /* TCG: the host TSC rate given to the guest kernel, or 0 */
} sl_vm_config;

/* Start the monitor (which boots or resumes the VM). Returns at once: the
 * guest's READY arrives on out->ctl_fd later, and requests sent before that
 * wait in the socket. out->cg is the sandbox cgroup (monitor + QEMU). 0 or
 * -errno with a message in errbuf. */
int sl_vm_spawn(const sl_vm_config *cfg, sl_sandbox *out, char *errbuf, size_t errlen);

/* Can this host run microVMs? 0 and *accel ("kvm", or "tcg" when KVM is
 * present but cannot run the guest kernel, see vm_probe.c), or -1 with why
 * (what is missing) in why. guest_dir is checked for the guest files. */
int sl_vm_probe(const char *guest_dir, const char **accel, const char **qemu, char *why,
                size_t cap);
/* The host TSC rate in kHz, measured over 50 ms (0 if unknown). */
unsigned long sl_vm_tsc_khz(void);

/* The monitor process body (vm_monitor.c): never returns. */
_Noreturn void sl_vm_monitor_main(const sl_vm_config *cfg, int ctl);

#endif
