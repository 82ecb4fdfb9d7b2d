"""OCI runtime-spec bundles for container shells: namespaces, a minimal root, seccomp.

The root filesystem is an empty read-only directory; the worker gets read-only binds of
exactly what it needs (the interpreter and stdlib under /usr, the platform's virtualenv and
sources), a private size-limited /tmp, and /code, a tmpfs the shipped bundle is unpacked into.
No host /etc, /root, /home or platform data directory is visible; a function's volume is
mounted into its container when it loads (``mount_into``), at a point made here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Denied with EPERM: what lets a process leave or reconfigure its sandbox or the kernel.
DENIED_SYSCALLS = (
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "unshare",
    "setns",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "reboot",
    "swapon",
    "swapoff",
    "perf_event_open",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "syslog",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "vhangup",
    "personality",
)
# Kept only until the worker drops to the instance's uid, which clears them.
CAPABILITIES = ["CAP_SETUID", "CAP_SETGID", "CAP_NET_ADMIN"]
CODE_DIR = "/code"
WORK_DIR = "/tmp"


# What a shell's config mounts itself: a volume can neither cover these nor go inside them.
CONFIG_MOUNTS = ("/proc", "/dev", "/sys", WORK_DIR, CODE_DIR)


def volume_mount_point(rootfs: Path, path: str, binds: list[str]) -> Path:
    """Make ``path``, where a function's volume goes in its containers, a directory of the
    shared read-only root (so it exists in every container, empty where nothing is mounted
    on it). Refuses places the container's own mounts hold: a volume over the virtualenv's
    bind would hide the worker's code."""
    for taken in (*CONFIG_MOUNTS, *binds):
        if path == taken or path.startswith(taken + "/") or taken.startswith(path + "/"):
            raise ValueError(f"{path!r} overlaps {taken}, which the container mounts itself")
    point = rootfs
    for part in path.strip("/").split("/"):
        point = point / part
        if point.is_symlink():
            raise ValueError(f"{path!r} goes through a symbolic link of the container's root")
        point.mkdir(exist_ok=True)
        point.chmod(0o755)  # the instance's uid must reach it (the platform's umask is 077)
    return point


def seccomp_profile() -> dict[str, Any]:
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }


def _bind(path: str) -> dict[str, Any]:
    return {
        "destination": path,
        "type": "bind",
        "source": path,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    }


def _tmpfs(path: str, size: str, mode: str) -> dict[str, Any]:
    return {
        "destination": path,
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", f"size={size}", f"mode={mode}"],
    }


def read_only_paths() -> list[str]:
    """Host directories the worker needs: /usr, the virtualenv, the nfaas sources."""
    import sys

    import nfaas

    paths = ["/usr", sys.prefix]
    package_root = str(Path(nfaas.__file__).resolve().parents[1])
    if not package_root.startswith(sys.prefix + os.sep):
        paths.append(package_root)
    return paths


def prepare_rootfs(rootfs: Path, binds: list[str]) -> None:
    """The shared empty root: mount points and the /lib, /bin symlinks of a merged-/usr system."""
    for name in ("proc", "dev", "sys", "tmp", "code", "etc"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
        # a tmpfs takes the mode of its mount point: /dev must be traversable for the
        # instance's uid (a program opens /dev/null, /dev/urandom)
        (rootfs / name).chmod(0o755)
    for link, target in (
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
    ):
        path = rootfs / link
        if not path.is_symlink() and not path.exists():
            path.symlink_to(target)
    for bind in binds:
        point = rootfs / bind.lstrip("/")
        point.mkdir(parents=True, exist_ok=True)
        # the instance's uid must traverse to the bind (the platform's umask is 077)
        while point != rootfs:
            point.chmod(0o755)
            point = point.parent
    rootfs.chmod(0o755)
    # runc gives a tmpfs the mode of the directory it is mounted on
    (rootfs / "tmp").chmod(0o1777)


def shell_config(
    shell_id: str,
    args: list[str],
    rootfs: Path,
    binds: list[str],
    cgroups_path: str,
    tmp_size: str = "64m",
) -> dict[str, Any]:
    """config.json of a shell's bundle (OCI runtime spec 1.0)."""
    caps = list(CAPABILITIES)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": shell_id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=16m"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            _tmpfs(WORK_DIR, tmp_size, "1777"),
            _tmpfs(CODE_DIR, "64m", "755"),
            *[_bind(path) for path in binds],
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": False, "access": "rwm"}], "pids": {"limit": 64}},
            "seccomp": seccomp_profile(),
            "maskedPaths": [
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/asound",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }
