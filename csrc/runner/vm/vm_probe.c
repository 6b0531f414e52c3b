/* vm_probe.c - can this host run microVM sandboxes, and how?
 *
 * Needs: qemu-system-x86_64 (Debian qemu-system-x86), the guest files
 * (python -m sandlot._vmguest), and an accelerator. KVM is used when
 * /dev/kvm opens and the CPU exposes hardware virtualisation (vmx/svm).
 * Some hosts expose /dev/kvm without it: a KVM built on PVM (the
 * "kvm_pvm" module, nested virtualisation without VMX inside a VM) runs only
 * guest kernels built for PVM, and Debian's kernel is not one (it stops
 * right after its real-mode setup). There the tier falls back to QEMU's TCG,
 * a real VM with the same devices, snapshots and isolation, only slower, and
 * `sandlot runner status` says so. SANDLOT_MICROVM_ACCEL=kvm|tcg forces one. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include "sl_vm.h"

unsigned long sl_vm_tsc_khz(void)
{
    struct timespec a, b, d = {0, 50000000};
    clock_gettime(CLOCK_MONOTONIC, &a);
    unsigned long long t0 = __rdtsc();
    nanosleep(&d, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    unsigned long long t1 = __rdtsc();
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    if (!(s > 0.01) || t1 <= t0)
        return 0;
    return (unsigned long)((double)(t1 - t0) / s / 1000.0);
}

static int cpu_has_hw_virt(void)
{
    FILE *f = fopen("/proc/cpuinfo", "re");
    if (f == NULL)
        return 0;
    char line[8192];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        found = strstr(line, " vmx") != NULL || strstr(line, " svm") != NULL;
        break;
    }
    fclose(f);
    return found;
}

int sl_vm_probe(const char *guest_dir, const char **accel, const char **qemu, char *why, size_t cap)
{
    static const char *const qemus[] = {"/usr/bin/qemu-system-x86_64",
                                        "/usr/local/bin/qemu-system-x86_64"};
    *qemu = NULL;
    for (size_t i = 0; i < 2 && *qemu == NULL; i++)
        if (access(qemus[i], X_OK) == 0)
            *qemu = qemus[i];
    if (*qemu == NULL) {
        snprintf(why, cap,
                 "qemu-system-x86_64 is not installed (Debian: apt-get install "
                 "qemu-system-x86)");
        return -1;
    }
    const char *files[] = {"vmlinuz", "initrd.img", "hostroot.erofs"};
    for (size_t i = 0; i < 3; i++) {
        char p[4200];
        snprintf(p, sizeof(p), "%s/%s", guest_dir, files[i]);
        if (access(p, R_OK) != 0) {
            snprintf(why, cap,
                     "the microVM guest is not built (%s missing): run `python -m "
                     "sandlot._vmguest`",
                     p);
            return -1;
        }
    }
    const char *force = getenv("SANDLOT_MICROVM_ACCEL");
    int kvm_ok = 0;
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        kvm_ok = cpu_has_hw_virt();
    }
    if (force != NULL && strcmp(force, "kvm") == 0) {
        if (fd < 0) {
            snprintf(why, cap, "SANDLOT_MICROVM_ACCEL=kvm but /dev/kvm cannot be opened");
            return -1;
        }
        *accel = "kvm";
    } else if (force != NULL && strcmp(force, "tcg") == 0) {
        *accel = "tcg";
    } else {
        *accel = kvm_ok ? "kvm" : "tcg";
    }
    if (strcmp(*accel, "tcg") == 0) {
        if (fd < 0)
            snprintf(why, cap, "no usable /dev/kvm: microVMs run under QEMU TCG (slower)");
        else if (!kvm_ok)
            snprintf(why, cap,
                     "/dev/kvm exists but the CPU has no vmx/svm (nested KVM via PVM runs only "
                     "PVM guest kernels, not Debian's): microVMs run under QEMU TCG (slower)");
        else
            snprintf(why, cap, "SANDLOT_MICROVM_ACCEL=tcg: microVMs run under QEMU TCG");
    } else {
        why[0] = 0;
    }
    return 0;
}
