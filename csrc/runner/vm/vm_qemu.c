/* vm_qemu.c - starting QEMU for one microVM, confined.
 *
 * The VMM is the attack surface a guest sees, so it gets as little as the
 * job needs (docs/security.md, "MicroVM tier"):
 *   - its own network, IPC, UTS and mount namespaces (it needs no network:
 *     the guest has no NIC, control is a virtio-serial port on a unix socket);
 *   - `-sandbox on` with obsolete, spawn and resourcecontrol denied (QEMU's
 *     seccomp filter). elevateprivileges stays allowed because QEMU 7.2
 *     installs the filter before it switches to the -runas user, and a
 *     denied setuid kills it ("Bad system call"); after the switch it holds
 *     no capabilities, so there is nothing left to elevate to;
 *   - `-nodefaults -no-user-config`: only the devices listed here (virtio-blk
 *     for the read-only root image, virtio-serial for control, the serial
 *     console to a file); no NIC, no USB, no display, no option ROMs;
 *   - `-chroot` into the sandbox's own directory and `-runas` an unprivileged
 *     uid once its files are open, so what it can reach afterwards is its own
 *     sockets and console log;
 *   - PR_SET_PDEATHSIG: it dies with its monitor, and it is in the sandbox's
 *     cgroup with the monitor, so the sandbox's kill reaches it too.
 */
#include "vm_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

int sl__vm_ram_path(const char *id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "/dev/shm/sandlot-vm-%s.ram", id);
    return n > 0 && (size_t)n < cap ? 0 : -ENAMETOOLONG;
}

#define MAXARGS 64

pid_t sl__vm_qemu_start(const sl_vm_config *cfg, const char *ram_path, int incoming_fd, char *err,
                        size_t errlen)
{
    char mach[160], mem[32], smp[16], memobj[PATH_MAX + 128], drive[PATH_MAX + 96],
        chr[PATH_MAX + 64], qmp[PATH_MAX + 48], serial[PATH_MAX + 16], kernel[PATH_MAX],
        initrd[PATH_MAX], append[512];
    const char *argv[MAXARGS];
    int n = 0;
    int restore = cfg->restore_dir != NULL;
    snprintf(mach, sizeof(mach),
             "microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem");
    snprintf(mem, sizeof(mem), "%llu", cfg->mem_mb);
    snprintf(smp, sizeof(smp), "%u", cfg->vcpus);
    snprintf(memobj, sizeof(memobj),
             "memory-backend-file,id=mem,size=%lluM,mem-path=%s/%s,share=%s", cfg->mem_mb,
             restore ? cfg->restore_dir : "", restore ? VM_SNAP_RAM : "", restore ? "off" : "on");
    if (!restore)
        snprintf(memobj, sizeof(memobj),
                 "memory-backend-file,id=mem,size=%lluM,mem-path=%s,share=on", cfg->mem_mb,
                 ram_path);
    snprintf(drive, sizeof(drive), "file=%s,if=none,id=root,format=raw,readonly=on,cache=unsafe",
             cfg->root_image);
    snprintf(chr, sizeof(chr), "socket,id=c0,path=%s/%s,server=on,wait=off", cfg->dir, VM_PORT);
    snprintf(qmp, sizeof(qmp), "unix:%s/%s,server=on,wait=off", cfg->dir, VM_QMP);
    snprintf(serial, sizeof(serial), "file:%s/%s", cfg->dir, VM_CONSOLE);
    /* The uncompressed ELF kernel boots through PVH and skips the bzImage's
     * self-decompression (seconds under TCG); vmlinuz is the fallback. */
    snprintf(kernel, sizeof(kernel), "%s/vmlinux", cfg->guest_dir);
    if (access(kernel, R_OK) != 0)
        snprintf(kernel, sizeof(kernel), "%s/vmlinuz", cfg->guest_dir);
    snprintf(initrd, sizeof(initrd), "%s/initrd.img", cfg->guest_dir);
    snprintf(append, sizeof(append),
             "console=ttyS0 quiet loglevel=1 panic=-1 reboot=t i8042.noaux i8042.nomux "
             "i8042.nopnp i8042.dumbkbd mitigations=off "
             "random.trust_cpu=on sl.id=%s sl.rw=%lluM",
             cfg->id, cfg->rw_mb);
    if (cfg->tsc_khz > 0) {
        /* Under TCG the guest's TSC runs at the host's rate, but the
         * kernel's calibration against the emulated PIT fails on a busy
         * host and it then stalls for tens of seconds: tell it the rate. */
        size_t l = strlen(append);
        snprintf(append + l, sizeof(append) - l, " tsc_early_khz=%lu lpj=%lu tsc=reliable",
                 cfg->tsc_khz, cfg->tsc_khz * 1000 / 250 /* Debian's HZ */);
    }
    argv[n++] = cfg->qemu;
    argv[n++] = "-M";
    argv[n++] = mach;
    argv[n++] = "-accel";
    /* TCG's translation cache defaults to 1 GiB per VM; 64 MiB is plenty for
     * one guest and keeps an idle VM's host memory near its guest RAM. */
    argv[n++] = strcmp(cfg->accel, "tcg") == 0 ? "tcg,tb-size=64" : cfg->accel;
    argv[n++] = "-cpu";
    /* PVM-style nested KVM rejects IA32_ARCH_CAPABILITIES from "host". */
    argv[n++] = strcmp(cfg->accel, "kvm") == 0 ? "host,-arch-capabilities" : "max";
    argv[n++] = "-m";
    argv[n++] = mem;
    argv[n++] = "-smp";
    argv[n++] = smp;
    argv[n++] = "-nodefaults";
    argv[n++] = "-no-user-config";
    argv[n++] = "-nographic";
    argv[n++] = "-sandbox";
    argv[n++] = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";
    argv[n++] = "-object";
    argv[n++] = memobj;
    if (!restore) {
        /* A resumed VM must not get these: QEMU would copy the kernel and
         * initramfs into guest RAM again, over the restored memory. */
        argv[n++] = "-kernel";
        argv[n++] = kernel;
        argv[n++] = "-initrd";
        argv[n++] = initrd;
        argv[n++] = "-append";
        argv[n++] = append;
    }
    argv[n++] = "-drive";
    argv[n++] = drive;
    argv[n++] = "-device";
    argv[n++] = "virtio-blk-device,drive=root";
    argv[n++] = "-device";
    argv[n++] = "virtio-serial-device";
    argv[n++] = "-chardev";
    argv[n++] = chr;
    argv[n++] = "-device";
    argv[n++] = "virtserialport,chardev=c0,name=sl0";
    argv[n++] = "-serial";
    argv[n++] = serial;
    argv[n++] = "-qmp";
    argv[n++] = qmp;
    argv[n++] = "-no-reboot";
    argv[n++] = "-chroot";
    argv[n++] = cfg->dir;
    argv[n++] = "-runas";
    argv[n++] = "nobody";
    if (restore) {
        argv[n++] = "-incoming";
        argv[n++] = "defer";
    }
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -errno;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1)
            _exit(127); /* the monitor is already gone */
        if (unshare(CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNS) < 0 ||
            mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
            dprintf(2, "sandlot vm: unshare: %s\n", strerror(errno));
            _exit(126);
        }
        if (incoming_fd >= 0 && dup2(incoming_fd, 3) < 0)
            _exit(126);
        /* Everything else the monitor holds stays out of QEMU. */
        int lo = incoming_fd >= 0 ? 4 : 3;
        for (int fd = lo; fd < 1024; fd++)
            close(fd);
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
        }
        char log[PATH_MAX + 16];
        snprintf(log, sizeof(log), "%s/qemu.log", cfg->dir);
        int lf = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (lf >= 0)
            dup2(lf, 2);
        execv(cfg->qemu, (char *const *)argv);
        dprintf(2, "sandlot vm: exec %s: %s\n", cfg->qemu, strerror(errno));
        _exit(127);
    }
    return pid;
}

static unsigned char copybuf[1 << 20];

static int is_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

long long sl__vm_copy_sparse(const char *src, const char *dst)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -errno;
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) {
        int e = errno;
        close(in);
        return -e;
    }
    struct stat st;
    long long copied = 0;
    int rc = fstat(in, &st) < 0 ? -errno : 0;
    off_t pos = 0;
    while (rc == 0 && pos < st.st_size) {
        off_t data = lseek(in, pos, SEEK_DATA);
        if (data < 0)
            break; /* ENXIO: only a hole is left */
        off_t hole = lseek(in, data, SEEK_HOLE);
        if (hole < 0)
            hole = st.st_size;
        /* The RAM file is on tmpfs and the snapshot on disk: copy_file_range
         * cannot cross them, so plain reads, and all-zero blocks (guest pages
         * touched then zeroed) are left as holes too. */
        off_t off = data;
        while (rc == 0 && off < hole) {
            size_t want =
                (size_t)(hole - off) < sizeof(copybuf) ? (size_t)(hole - off) : sizeof(copybuf);
            ssize_t r = pread(in, copybuf, want, off);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                rc = r < 0 ? -errno : -EIO;
                break;
            }
            for (ssize_t b = 0; b < r && rc == 0; b += 4096) {
                size_t n = (size_t)(r - b) < 4096 ? (size_t)(r - b) : 4096;
                if (is_zero(copybuf + b, n))
                    continue;
                if (pwrite(out, copybuf + b, n, off + b) != (ssize_t)n)
                    rc = errno ? -errno : -EIO;
                copied += (long long)n;
            }
            off += r;
        }
        pos = hole;
    }
    if (rc == 0 && ftruncate(out, st.st_size) < 0)
        rc = -errno;
    if (rc == 0 && fsync(out) < 0)
        rc = -errno;
    close(in);
    if (close(out) < 0 && rc == 0)
        rc = -errno;
    return rc < 0 ? rc : copied;
}
