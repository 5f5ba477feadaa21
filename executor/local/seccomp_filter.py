"""Write the sandbox's seccomp denylist as raw BPF (run with the system python3-seccomp).

Usage: /usr/bin/python3 seccomp_filter.py OUTPUT

This file is executed by Debian's /usr/bin/python3, which has the `seccomp` binding; the
service's own interpreter usually does not. It must stay a standalone script.

Default ALLOW, EPERM for syscalls a code interpreter never needs and that widen the kernel's
attack surface or let a process escape its namespaces. ENOSYS for clone3 makes glibc fall back
to clone(), whose flags a filter can inspect.
"""

import contextlib
import errno
import sys

import seccomp  # type: ignore[import-not-found]

DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "perf_event_open",
    "bpf",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "setns",
    "unshare",
    "swapon",
    "swapoff",
    "reboot",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "acct",
    "quotactl",
    "syslog",
    "open_by_handle_at",
    "name_to_handle_at",
    "fanotify_init",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "lookup_dcookie",
    "vhangup",
    "uselib",
    "ioperm",
    "iopl",
    "personality",
)

# CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUTS, CLONE_NEWIPC,
# CLONE_NEWCGROUP: no new namespaces from inside the sandbox.
CLONE_NEW_FLAGS = (0x10000000, 0x20000, 0x40000000, 0x20000000, 0x4000000, 0x8000000, 0x2000000)
TIOCSTI = 0x5412


def main(output: str) -> None:
    """Write the BPF program to `output`."""
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED:
        # A syscall this libseccomp or architecture does not know cannot be called anyway.
        with contextlib.suppress(RuntimeError):
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
    for bit in CLONE_NEW_FLAGS:
        f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(
        seccomp.ERRNO(errno.EPERM), "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, TIOCSTI)
    )
    with open(output, "wb") as out:
        f.export_bpf(out)


if __name__ == "__main__":
    main(sys.argv[1])
