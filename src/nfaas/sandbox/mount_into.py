"""Bind a node directory into a running container: ``python -I -S mount_into.py PID SOURCE TARGET``.

A container shell is started before it knows its function, so a volume cannot be in its OCI
config; it is mounted when the function loads. The source is cloned as a detached mount
(``open_tree``) in the node's mount namespace, made nosuid, nodev and private
(``mount_setattr``), and attached at TARGET inside the mount namespace of process PID
(``setns`` + ``move_mount``). Joining a mount namespace needs a single-threaded process, which
the platform is not: hence this small program, which uses the standard library only (it runs
with ``-I -S``, without site-packages, to start quickly). Linux 5.12 or later.
"""

from __future__ import annotations

import ctypes
import os
import sys

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MS_PRIVATE = 1 << 18
CLONE_NEWNS = 0x20000


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def mount_into(pid: int, source: str, target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    long = ctypes.c_long  # syscall() takes its arguments as longs: pass them as such
    tree = _check(
        libc.syscall(
            long(SYS_OPEN_TREE),
            long(AT_FDCWD),
            ctypes.c_char_p(os.fsencode(source)),
            long(OPEN_TREE_CLONE | os.O_CLOEXEC | AT_SYMLINK_NOFOLLOW),
        ),
        f"open_tree({source})",
    )
    attr = MountAttr(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, MS_PRIVATE, 0)
    _check(
        libc.syscall(
            long(SYS_MOUNT_SETATTR),
            long(tree),
            ctypes.c_char_p(b""),
            long(AT_EMPTY_PATH),
            ctypes.byref(attr),
            long(ctypes.sizeof(attr)),
        ),
        "mount_setattr(nosuid, nodev, private)",
    )
    namespace = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    _check(libc.setns(namespace, CLONE_NEWNS), f"setns(mount namespace of {pid})")
    # the root and working directory are now the container's: TARGET is resolved in it
    _check(
        libc.syscall(
            long(SYS_MOVE_MOUNT),
            long(tree),
            ctypes.c_char_p(b""),
            long(AT_FDCWD),
            ctypes.c_char_p(os.fsencode(target)),
            long(MOVE_MOUNT_F_EMPTY_PATH),
        ),
        f"move_mount(to {target})",
    )


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(f"usage: {argv[0]} PID SOURCE TARGET", file=sys.stderr)
        return 2
    try:
        mount_into(int(argv[1]), argv[2], argv[3])
    except (OSError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
