"""The init of a microVM guest: mount what the worker needs, then serve on the second serial
port. Loaded by the guest image's /init (see nfaas.sandbox.guest_image)."""

from __future__ import annotations

import ctypes
import os
import sys
import termios
import tty

from nfaas.worker import runtime
from nfaas.worker.protocol import HELLO_ID, Pong, encode

STREAM_PORT = "/dev/ttyS1"
MOUNTS = (("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"), ("tmpfs", "/tmp", "tmpfs"))


def mount_all() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for source, target, kind in MOUNTS:
        os.makedirs(target, exist_ok=True)
        if libc.mount(source.encode(), target.encode(), kind.encode(), 0, None) != 0:
            print(f"[nfaas] mount {target}: errno {ctypes.get_errno()}", file=sys.stderr)
    os.chmod("/tmp", 0o1777)
    os.chmod("/", 0o755)  # the initramfs root starts out world-writable
    os.makedirs("/code", mode=0o755, exist_ok=True)


def open_stream() -> int:
    fd = os.open(STREAM_PORT, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)  # bytes, not lines: no echo, no translation, no signals
    attrs = termios.tcgetattr(fd)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    termios.tcflush(fd, termios.TCIOFLUSH)  # whatever arrived before raw mode is noise
    return fd


def main() -> None:
    mount_all()
    channel = runtime.FdChannel(open_stream())
    channel.sendall(encode(Pong(HELLO_ID)))  # the node sends nothing before this
    runtime.serve(channel, ahead=True)


if __name__ == "__main__":
    main()
