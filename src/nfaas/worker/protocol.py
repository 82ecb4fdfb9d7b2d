"""The worker stream protocol: length-prefixed msgpack frames, multiplexed by request id.

A frame is a 4-byte big-endian length followed by one msgpack-encoded message. Messages are
msgspec structs encoded as arrays whose first element is a tag, so decoding is one call.
The same bytes travel over a Unix socket (process, container) or a serial port (microVM).
"""

from __future__ import annotations

import struct

import msgspec

HEADER = struct.Struct(">I")
# A guest announces itself with an unsolicited Pong carrying this id once its port is ready.
HELLO_ID = 0
MAX_FRAME = 256 * 1024 * 1024


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


class Loaded(msgspec.Struct, tag="loaded", array_like=True):
    id: int
    ok: bool
    error: str = ""
    load_seconds: float = 0.0
    import_seconds: float = (
        0.0  # of load_seconds: importing the handler, after the code was in place
    )


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


class Ping(msgspec.Struct, tag="ping", array_like=True):
    id: int


class Pong(msgspec.Struct, tag="pong", array_like=True):
    id: int


Message = Load | Loaded | Invoke | Result | Error | Ping | Pong

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
