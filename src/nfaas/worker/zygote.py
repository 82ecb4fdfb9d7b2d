"""The zygote: a process that has imported the worker runtime and forks shells on request.

Forking from it (the SOCK idea) skips interpreter start-up and imports on every cold start.
Control messages arrive on an inherited Unix SOCK_SEQPACKET socket, one per message: ``{"op": "fork", "shell": id}`` with two
file descriptors attached (the shell's stream socket and its log pipe). Replies are
``{"op": "forked", "shell", "pid"}`` and, when a child ends, ``{"op": "exited", "pid", "status"}``.
"""

from __future__ import annotations

import array

# Modules handlers commonly use, imported once here so forked instances share them.
import base64  # noqa: F401
import collections  # noqa: F401
import ctypes
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import gc
import hashlib  # noqa: F401
import json  # noqa: F401
import math  # noqa: F401
import os
import random  # noqa: F401
import re  # noqa: F401
import select
import signal
import socket
import sys
import time  # noqa: F401
import typing  # noqa: F401
import uuid  # noqa: F401
from typing import Any

import msgspec

from nfaas.worker import runtime

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MAX_COMMAND = 65536
_libc = ctypes.CDLL(None, use_errno=True)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def send(control: socket.socket, message: dict[str, Any]) -> None:
    control.send(_encoder.encode(message))


def recv_command(control: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One command per SOCK_SEQPACKET message, its file descriptors attached to it."""
    fds = array.array("i")
    payload, ancdata, _flags, _addr = control.recvmsg(
        MAX_COMMAND, socket.CMSG_SPACE(2 * fds.itemsize)
    )
    if not payload:
        return None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return _decoder.decode(payload), list(fds)


def become_shell(
    control: socket.socket,
    wakeup: tuple[int, int],
    command: dict[str, Any],
    stream_fd: int,
    log_fd: int,
) -> None:
    """In the child: detach from the zygote's plumbing, drop to the shell's uid, serve."""
    control.close()
    signal.set_wakeup_fd(-1)
    for fd in wakeup:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    os.chdir(command["workdir"])
    uid = int(command.get("uid", -1))
    runtime.drop_privileges(uid, uid)
    die_with_parent()  # after the uid change, which clears the parent-death signal
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    runtime.serve(socket.socket(fileno=stream_fd), bool(command.get("ahead", True)))


def reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        send(control, {"op": "exited", "pid": pid, "status": os.waitstatus_to_exitcode(status)})


def main(control_fd: int) -> None:
    die_with_parent()
    # Orphans of instances (a command function's program whose worker was killed) come here
    # and are reaped below, rather than becoming zombies of the platform process.
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    control = socket.socket(fileno=control_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    gc.collect()
    runtime.BASE_DATA = runtime.vm_data() + 8 * 1024**2  # headroom for a child's first pages
    gc.freeze()  # keep the collector from touching (and copying) the zygote's objects after fork
    send(control, {"op": "ready", "pid": os.getpid()})
    while True:
        readable, _, _ = select.select([control.fileno(), wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
            reap(control)
        if control.fileno() not in readable:
            continue
        received = recv_command(control)
        if received is None:
            return
        command, fds = received
        if command.get("op") != "fork" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            send(
                control,
                {"op": "failed", "shell": command.get("shell"), "error": "bad fork command"},
            )
            continue
        pid = os.fork()
        if pid == 0:
            try:
                become_shell(control, (wake_r, wake_w), command, fds[0], fds[1])
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)
        send(control, {"op": "forked", "shell": command["shell"], "pid": pid})


if __name__ == "__main__":
    main(int(sys.argv[1]))
