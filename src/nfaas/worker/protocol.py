"""The worker stream protocol: length-prefixed msgpack frames, multiplexed by request id.

A frame is a 4-byte big-endian length followed by one msgpack-encoded message. Messages are
msgspec structs encoded as arrays whose first element is a tag, so decoding is one call.
The same bytes travel over a Unix socket (process, container) or a serial port (microVM).
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

HEADER = struct.Struct(">I")
# A guest announces itself with an unsolicited Pong carrying this id once its port is ready.
HELLO_ID = 0
MAX_FRAME = 256 * 1024 * 1024


class PortBinding(msgspec.Struct, array_like=True):
    """One port of an NF function: its graph name, URL and what the node found out about it.
    Its file descriptor arrives with the Attach frame before the Load frame (in order)."""

    name: str
    url: str
    info: dict[str, int | str] = {}


class Attach(msgspec.Struct, tag="attach", array_like=True):
    """Carries ``count`` file descriptors (SCM_RIGHTS) for the next Load's ports; no reply."""

    id: int
    count: int


class Load(msgspec.Struct, tag="load", array_like=True):
    """Turn a function-less shell into an instance of one function."""

    id: int
    code_dir: str
    function_name: str
    namespace: str
    instance_id: str
    workdir: str
    env: dict[str, str]
    uid: int
    gid: int
    rlimits: dict[str, int]
    concurrency: int = 1
    deps_dir: str = ""
    # The code itself (a zip), for sandboxes that cannot see the node's files: the worker
    # unpacks it into ``code_dir`` before it drops privileges.
    bundle: bytes = b""
    deps: bytes = b""  # installed requirements (a zip), unpacked into ``deps_dir`` likewise
    runtime: str = "python"
    ports: list[PortBinding] = []  # runtime nf: bound in order to the attached descriptors
    command: list[str] = []  # runtime command: the program and its arguments


class Loaded(msgspec.Struct, tag="loaded", array_like=True):
    id: int
    ok: bool
    error: str = ""
    load_seconds: float = 0.0
    import_seconds: float = (
        0.0  # of load_seconds: importing the handler, after the code was in place
    )
    pid: int = 0  # runtime command: the program's pid, in the worker's PID namespace


class Invoke(msgspec.Struct, tag="invoke", array_like=True):
    id: int
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


class Result(msgspec.Struct, tag="result", array_like=True):
    id: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Error(msgspec.Struct, tag="error", array_like=True):
    """The handler raised: ``kind`` is the exception type, ``message`` its text."""

    id: int
    kind: str
    message: str


class Report(msgspec.Struct, tag="report", array_like=True):
    """Unsolicited, from an NF instance about once a second while packets flow: the graph's
    per-operator counters and each port's counters, cumulative since the instance started."""

    id: int
    operators: list[dict[str, Any]]
    ports: dict[str, dict[str, int]]
    rx_packets: int


class Exited(msgspec.Struct, tag="exited", array_like=True):
    """Unsolicited, from a command instance whose program ended, just before the worker exits:
    ``status`` as ``os.waitstatus_to_exitcode`` gives it (negative: killed by that signal)."""

    id: int
    status: int
    reason: str


class Ping(msgspec.Struct, tag="ping", array_like=True):
    id: int


class Pong(msgspec.Struct, tag="pong", array_like=True):
    id: int


Message = Load | Loaded | Invoke | Result | Error | Ping | Pong | Attach | Report | Exited

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame."""


def encode(message: Message) -> bytes:
    payload = _encoder.encode(message)
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes | memoryview) -> Message:
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"bad frame: {exc}") from None


class FrameBuffer:
    """Accumulates stream bytes and yields complete messages."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            if end - pos - 4 < length:
                break
            out.append(decode(memoryview(buf)[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return out
