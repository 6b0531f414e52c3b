/* sl_seccomp.h - the default seccomp-bpf profile of every sandboxed process.
 *
 * Built once in sandlotd with libseccomp and exported as a classic BPF
 * program (an array of struct sock_filter). sl_sandbox_spawn() hands it to
 * sandlot-init (SL_CTL_SECCOMP), which is static and links no libseccomp;
 * init installs it on itself once, before it starts anything, so every
 * process of the sandbox inherits it (and refuses to start processes
 * without it).
 *
 * The profile is Docker's default turned around: Docker allows a list and
 * denies the rest; this allows everything except the syscalls Docker's
 * profile keeps from an unprivileged container (module loading, kexec,
 * reboot, every mount API, unshare/setns and clone with namespace flags,
 * ptrace and friends, bpf, perf_event_open, userfaultfd, the keyring, the
 * clock setters, file handles, raw port I/O, swap, accounting, quotas,
 * io_uring, ...), which fail with EPERM; clone3 fails with ENOSYS so libc
 * falls back to clone, whose flags can be checked; personality() only takes
 * the values Docker allows. Syscalls of another ABI (i386 int 0x80, x32 on
 * x86_64, arm32 on arm64) kill the process. docs/security.md has the list and
 * the reasons.
 */
#ifndef SL_SECCOMP_H
#define SL_SECCOMP_H

#include <linux/filter.h>
#include <stddef.h>

/* The default profile: *prog points to *len instructions owned by this module
 * (built on the first call and kept for the life of the process; call it once
 * at start, as sl_sandbox_load_init does, since the first call is not
 * thread-safe). Returns 0 or -errno (-ENOMEM, or what libseccomp reported). */
int sl_seccomp_default(const struct sock_filter **prog, size_t *len);

/* The profile as libseccomp's human-readable pseudo code, written to fd (for
 * debugging and docs). Returns 0 or -errno. */
int sl_seccomp_dump(int fd);

#endif
