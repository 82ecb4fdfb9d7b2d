"""Entry point of a shell that is started on its own (in a container or a VM), not forked.

``python -m nfaas.worker.shell_main FD``: serve the worker protocol on the inherited stream
socket FD. Runs as the sandbox's root with few capabilities; the Load frame makes it drop to
the instance's uid.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys

from nfaas.worker import runtime

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def bring_up_loopback() -> None:
    """A new network namespace starts with ``lo`` down; the function may use localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def main(fd: int) -> None:
    try:
        bring_up_loopback()
    except OSError as exc:
        print(f"[nfaas] loopback stays down: {exc}", file=sys.stderr)
    runtime.serve(socket.socket(fileno=fd), ahead=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
