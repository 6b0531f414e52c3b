/* sl_seccomp.c - build the default seccomp profile with libseccomp.
 *
 * Runs in sandlotd only: sandlot-init is static and libc-only, so the runner
 * compiles the profile to classic BPF here, once, and sends the instructions
 * over the control channel (SL_CTL_SECCOMP). See sl_seccomp.h for what the
 * profile does and docs/security.md for why each entry is there.
 *
 * Most of the profile is libseccomp rules on a default-allow filter. One check
 * is not expressible that way: personality() must be refused unless its
 * argument is one of five values, and libseccomp allows only one comparison
 * per argument in a rule and no "allow" rule on an allow-by-default filter.
 * That check is a short hand-written BPF prefix placed in front of
 * libseccomp's program; it either returns EPERM or falls through to the first
 * instruction of libseccomp's program, which then decides as if the prefix
 * was not there (classic BPF jumps are relative and only forward, so the two
 * programs concatenate without relocation).
 */
#include "sl_seccomp.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Syscalls that fail with EPERM. Grouped as in Docker's default profile;
 * every one either needs a capability the sandbox does not have (then the
 * filter is a second wall and a smaller kernel surface) or reaches state that
 * is not namespaced (clock, keyring, kernel modules). Names unknown to this
 * libseccomp or absent on this architecture are skipped, unless listed in
 * new_syscalls below. */
static const char *const deny_eperm[] = {
    /* kernel code and power */
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    /* mounts, old and new API, and namespaces (CAP_SYS_ADMIN) */
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    /* other processes' memory and files (CAP_SYS_PTRACE) */
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    /* kernel-wide tracing, programs and faults */
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "lookup_dcookie",
    "fanotify_init",
    /* the keyring is not namespaced */
    "keyctl",
    "add_key",
    "request_key",
    /* the clock is not namespaced (CAP_SYS_TIME) */
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "stime",
    /* file handles bypass the mount tree (the "shocker" escape) */
    "open_by_handle_at",
    "name_to_handle_at",
    /* raw hardware (CAP_SYS_RAWIO) */
    "iopl",
    "ioperm",
    "vm86",
    "vm86old",
    /* host administration */
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    "syslog",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vhangup",
    /* NUMA policy of the host's memory (CAP_SYS_NICE) */
    "mbind",
    "set_mempolicy",
    "get_mempolicy",
    "move_pages",
    "migrate_pages",
    "set_mempolicy_home_node",
    /* io_uring: a large, often-exploited surface that seccomp cannot see into
     * (Docker blocks it since 2023) */
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
};

/* Syscalls newer than libseccomp 2.5.4 knows by name. Since Linux 5.1 (424)
 * new syscalls have one number on every architecture but alpha, so the number
 * can stand in for the name. */
static const struct {
    const char *name;
    int nr;
} new_syscalls[] = {
    {"quotactl_fd", 443},
    {"set_mempolicy_home_node", 450},
    {"open_tree_attr", 467},
};

/* Namespace flags clone() may not carry (CLONE_NEWTIME cannot be passed to
 * clone(): its bit is part of the exit signal there). */
static const unsigned long clone_ns_flags[] = {
    0x00020000UL, /* CLONE_NEWNS */
    0x02000000UL, /* CLONE_NEWCGROUP */
    0x04000000UL, /* CLONE_NEWUTS */
    0x08000000UL, /* CLONE_NEWIPC */
    0x10000000UL, /* CLONE_NEWUSER */
    0x20000000UL, /* CLONE_NEWPID */
    0x40000000UL, /* CLONE_NEWNET */
};

/* personality() values Docker allows: PER_LINUX, PER_LINUX32, UNAME26,
 * PER_LINUX32|UNAME26, and 0xffffffff (query only). Everything else (e.g.
 * READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, MMAP_PAGE_ZERO) is refused. */
static const uint32_t personality_ok[] = {0x0, 0x8, 0x20000, 0x20008, 0xffffffffU};

/* The built profile, kept for the process's lifetime. */
static struct sock_filter *cached;
static size_t cached_len;

static int syscall_nr(uint32_t arch, const char *name)
{
    int nr = seccomp_syscall_resolve_name(name);

    /* (MIPS offsets every number by its ABI base: only the plain ones.) */
    if (nr == __NR_SCMP_ERROR &&
        (arch == SCMP_ARCH_X86_64 || arch == SCMP_ARCH_AARCH64 || arch == SCMP_ARCH_RISCV64 ||
         arch == SCMP_ARCH_X86 || arch == SCMP_ARCH_ARM)) {
        for (size_t i = 0; i < sizeof(new_syscalls) / sizeof(new_syscalls[0]); i++)
            if (strcmp(new_syscalls[i].name, name) == 0)
                return new_syscalls[i].nr;
    }
    /* Negative: libseccomp's placeholder for "not on this architecture". */
    return nr;
}

static int build_ctx(scmp_filter_ctx *out)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    uint32_t arch = seccomp_arch_native();
    /* s390 passes clone's flags second (stack first). */
    unsigned int flags_arg = (arch == SCMP_ARCH_S390 || arch == SCMP_ARCH_S390X) ? 1 : 0;
    int r;

    *out = NULL;
    if (!ctx)
        return -ENOMEM;
    /* Another ABI than the native one (int 0x80 from a 64-bit process, x32
     * syscall numbers): the rules below would not match its numbers, so the
     * process is killed rather than let through. */
    r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
    /* A binary tree instead of a linear chain: every allowed syscall (nearly
     * all of them) would otherwise walk past every rule. */
    if (r == 0)
        r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    for (size_t i = 0; r == 0 && i < sizeof(deny_eperm) / sizeof(deny_eperm[0]); i++) {
        int nr = syscall_nr(arch, deny_eperm[i]);

        if (nr >= 0)
            r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
    }
    /* clone3 passes its flags in memory, which seccomp cannot read: ENOSYS
     * makes glibc (2.34+) fall back to clone, whose flags are checked. */
    if (r == 0)
        r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    for (size_t i = 0; r == 0 && i < sizeof(clone_ns_flags) / sizeof(clone_ns_flags[0]); i++)
        r = seccomp_rule_add(
            ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
            SCMP_CMP(flags_arg, SCMP_CMP_MASKED_EQ, clone_ns_flags[i], clone_ns_flags[i]));
    /* Pushing input into a terminal (TIOCSTI) or the console (TIOCLINUX) lets
     * a process type commands into whatever shares that tty (bubblewrap's
     * rule, CVE-2017-5226). The command is an int: compare the low 32 bits
     * only, or upper garbage would slip past the check. */
    if (r == 0)
        r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ioctl), 1,
                             SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, (scmp_datum_t)TIOCSTI));
    if (r == 0)
        r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ioctl), 1,
                             SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, (scmp_datum_t)TIOCLINUX));
    if (r < 0) {
        seccomp_release(ctx);
        return r;
    }
    *out = ctx;
    return 0;
}

/* The personality() prefix (see the top of the file). */
static size_t personality_prefix(struct sock_filter *f, uint32_t arch, int nr)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint32_t lo = offsetof(struct seccomp_data, args[0]), hi = lo + 4;
#else
    const uint32_t hi = offsetof(struct seccomp_data, args[0]), lo = hi + 4;
#endif
    const size_t nok = sizeof(personality_ok) / sizeof(personality_ok[0]);
    /* 0 ld arch; 1 jne -> out; 2 ld nr; 3 jne -> out; 4 ld hi; 5 jne 0 -> deny;
     * 6 ld lo; 7.. jeq ok[i] -> out; deny: ret EPERM; out: (next program). */
    const size_t deny = 7 + nok, n = deny + 1;
    size_t i = 0;

    f[i++] =
        (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 0, (uint8_t)(n - i - 1));
    i++;
    f[i++] =
        (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    f[i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nr, 0,
                                        (uint8_t)(n - i - 1));
    i++;
    f[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, hi);
    f[i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, (uint8_t)(deny - i - 1));
    i++;
    f[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, lo);
    for (size_t k = 0; k < nok; k++) {
        f[i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, personality_ok[k],
                                            (uint8_t)(n - i - 1), 0);
        i++;
    }
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    return i;
}

/* libseccomp writes BPF to an fd only (2.5): a memfd, read back. */
static int export_bpf(scmp_filter_ctx ctx, struct sock_filter **prog, size_t *len)
{
    int fd = memfd_create("sandlot-seccomp", MFD_CLOEXEC), r;
    struct stat st;
    unsigned char *buf = NULL;
    size_t got = 0;

    if (fd < 0)
        return -errno;
    r = seccomp_export_bpf(ctx, fd);
    if (r < 0)
        goto out;
    if (fstat(fd, &st) < 0) {
        r = -errno;
        goto out;
    }
    if (st.st_size <= 0 || st.st_size % (off_t)sizeof(struct sock_filter) != 0) {
        r = -EPROTO;
        goto out;
    }
    buf = malloc((size_t)st.st_size);
    if (!buf) {
        r = -ENOMEM;
        goto out;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = pread(fd, buf + got, (size_t)st.st_size - got, (off_t)got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = n < 0 ? -errno : -EIO;
            goto out;
        }
        got += (size_t)n;
    }
    *prog = (struct sock_filter *)buf;
    *len = got / sizeof(struct sock_filter);
    buf = NULL;
    r = 0;
out:
    free(buf);
    close(fd);
    return r;
}

int sl_seccomp_default(const struct sock_filter **prog, size_t *len)
{
    struct sock_filter prefix[32], *body = NULL, *all;
    scmp_filter_ctx ctx;
    size_t nbody = 0, npre;
    uint32_t arch = seccomp_arch_native();
    int r, pers = seccomp_syscall_resolve_name("personality");

    if (!prog || !len)
        return -EINVAL;
    if (cached) {
        *prog = cached;
        *len = cached_len;
        return 0;
    }
    if (pers < 0)
        return -ENOSYS; /* every Linux architecture has it */
    r = build_ctx(&ctx);
    if (r < 0)
        return r;
    r = export_bpf(ctx, &body, &nbody);
    seccomp_release(ctx);
    if (r < 0)
        return r;
    npre = personality_prefix(prefix, arch, pers);
    /* The kernel's limit on one program (BPF_MAXINSNS). */
    if (npre + nbody > 4096) {
        free(body);
        return -E2BIG;
    }
    all = malloc((npre + nbody) * sizeof(*all));
    if (!all) {
        free(body);
        return -ENOMEM;
    }
    memcpy(all, prefix, npre * sizeof(*all));
    memcpy(all + npre, body, nbody * sizeof(*all));
    free(body);
    cached = all;
    cached_len = npre + nbody;
    *prog = cached;
    *len = cached_len;
    return 0;
}

int sl_seccomp_dump(int fd)
{
    scmp_filter_ctx ctx;
    int r = build_ctx(&ctx);

    if (r < 0)
        return r;
    r = seccomp_export_pfc(ctx, fd);
    seccomp_release(ctx);
    return r;
}
