"""TCP bytestream reassembly: per-flow, per-direction payload bytes delivered in order.

NetBricks' bytestream abstraction: instead of packets, user code sees each direction of a TCP
connection as a stream of bytes. `Reassembler.feed(batch, headers, now)` takes parsed
packets; for every stream it calls `on_data(stream, data)` with the next in-order bytes and
`on_close(stream, reason)` when the stream ends ("fin" once every byte before the FIN has
been delivered, "rst", "timeout", "shutdown").

Out-of-order segments wait in a per-stream buffer bounded by `max_buffer` bytes (segments that
do not fit are dropped and counted). Retransmissions and overlaps are trimmed against what was
already delivered: the first copy of a byte to arrive in order wins. Sequence numbers wrap
modulo 2**32. A stream starts at its SYN, or (unless `require_syn`) at the first segment seen.

The per-batch work is vectorised: TCP segments are picked, grouped by direction and their
payload bytes gathered into one buffer with numpy. Each stream is then visited once per
batch in Python; a stream whose segments in the batch are contiguous and in order gets its
bytes in a single callback without per-segment work.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nfaas.nf.batch import PacketBatch, packed_offsets, ragged_copy
from nfaas.nf.headers import PROTO_TCP, Headers, flow_hash
from nfaas.nf.operators import EdgeType, Operator, Output
from nfaas.nf.timers import Timers

__all__ = ["Reassemble", "Reassembler", "Stream", "StreamCallback"]

_FIN, _SYN, _RST = 0x01, 0x02, 0x04
_MOD = 1 << 32
_HALF = 1 << 31
# Segments further than this from the expected position are not of this stream's window.
_MAX_JUMP = 1 << 30

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(eq=False)
class Stream:
    """One direction of one TCP connection (src:sport -> dst:dport).

    `delivered` counts the bytes handed to `on_data` so far; `user` is free for the
    callback's own per-stream state (a protocol parser, say).
    """

    key: int
    src: IPAddr
    dst: IPAddr
    sport: int
    dport: int
    delivered: int = 0
    closed: str | None = None
    user: Any = None
    last_seen: float = 0.0
    buffered: int = 0
    base: int | None = None  # sequence number of stream byte 0
    fin_at: int | None = None  # stream offset of the FIN
    pending: list[tuple[int, bytes]] = field(default_factory=list, repr=False)

    @property
    def next_seq(self) -> int | None:
        """The sequence number of the next byte expected (None before the first segment)."""
        return None if self.base is None else (self.base + self.delivered) % _MOD


StreamCallback = Callable[[Stream, bytes], None]
CloseCallback = Callable[[Stream, str], None]


def _signed(delta: int) -> int:
    delta %= _MOD
    return delta - _MOD if delta >= _HALF else delta


class Reassembler:
    """Reassembles the TCP streams of parsed batches and hands their bytes to `on_data`."""

    def __init__(
        self,
        on_data: StreamCallback,
        on_close: CloseCallback | None = None,
        *,
        max_buffer: int = 1 << 20,
        max_streams: int = 65536,
        timeout: float = 300.0,
        require_syn: bool = False,
    ) -> None:
        self.on_data = on_data
        self.on_close = on_close
        self.max_buffer = max_buffer
        self.max_streams = max_streams
        self.timeout = timeout
        self.require_syn = require_syn
        self.streams: dict[int, Stream] = {}
        self.stats: dict[str, int] = {
            "segments": 0,
            "bytes_delivered": 0,
            "duplicate_bytes": 0,
            "out_of_order": 0,
            "buffer_overflow": 0,
            "out_of_window": 0,
            "no_syn": 0,
            "streams_opened": 0,
            "streams_refused": 0,
        }

    @property
    def open_streams(self) -> int:
        return sum(1 for s in self.streams.values() if s.closed is None)

    # -- feeding ---------------------------------------------------------------------------------

    def feed(self, batch: PacketBatch, h: Headers, now: float) -> None:
        """Process the TCP segments of a parsed batch (other packets are ignored)."""
        tcp = h.valid & (h.protocol == PROTO_TCP) & (h.l4_offset >= 0) & ~h.is_fragment
        tcp &= h.ip_version != 0
        flags = h.tcp_flags
        tcp &= (h.payload_length > 0) | ((flags & (_SYN | _FIN | _RST)) != 0)
        idx = np.flatnonzero(tcp)
        if idx.size == 0:
            return
        keys = flow_hash(h)[idx]
        order = np.argsort(keys, kind="stable")
        idx, keys = idx[order], keys[order]
        seq = h.tcp_seq[idx].astype(np.int64)
        plen = h.payload_length[idx].astype(np.int64)
        fl = flags[idx]
        # All payload bytes, segment after segment, in one gather.
        starts = packed_offsets(plen)
        payload = np.empty(int(plen.sum()), np.uint8)
        ragged_copy(payload, starts, batch.data, batch.offsets[idx] + h.payload_offset[idx], plen)
        # A group is "clean" when its segments are plain data, back to back in order.
        plain = (fl & (_SYN | _FIN | _RST)) == 0
        follows = np.zeros(idx.size, np.bool_)
        follows[1:] = (keys[1:] == keys[:-1]) & (seq[1:] == (seq[:-1] + plen[:-1]) % _MOD)
        bounds = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1], [True])))
        ok_run = plain & (follows | np.concatenate(([True], keys[1:] != keys[:-1])))
        bad_in_group = np.add.reduceat((~ok_run).astype(np.int64), bounds[:-1])
        self.stats["segments"] += int(idx.size)
        seq_l, plen_l, fl_l, starts_l = seq.tolist(), plen.tolist(), fl.tolist(), starts.tolist()
        for g, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
            key = int(keys[lo])
            stream = self.streams.get(key)
            if stream is None or (stream.closed is not None and fl_l[lo] & _SYN):
                stream = self._open(key, h, int(idx[lo]), now)
                if stream is None:
                    continue
            stream.last_seen = now
            if stream.closed is not None:
                continue
            first = seq_l[lo]
            clean = bad_in_group[g] == 0 and not stream.pending
            if clean and stream.base is None and not self.require_syn:
                stream.base = first
            if clean and stream.base is not None and first == stream.next_seq:
                end = starts_l[hi - 1] + plen_l[hi - 1]
                self._deliver(stream, payload[starts_l[lo] : end].tobytes())
                continue
            for i in range(lo, hi):
                start = starts_l[i]
                data = payload[start : start + plen_l[i]].tobytes()
                self._segment(stream, seq_l[i], fl_l[i], data)
                if stream.closed is not None:
                    break

    def _open(self, key: int, h: Headers, row: int, now: float) -> Stream | None:
        old = self.streams.get(key)
        if old is None and len(self.streams) >= self.max_streams:
            self.stats["streams_refused"] += 1
            return None
        if h.ip_version[row] == 6:
            src: IPAddr = ipaddress.IPv6Address(
                (int(h.ipv6_src_hi[row]) << 64) | int(h.ipv6_src_lo[row])
            )
            dst: IPAddr = ipaddress.IPv6Address(
                (int(h.ipv6_dst_hi[row]) << 64) | int(h.ipv6_dst_lo[row])
            )
        else:
            src = ipaddress.IPv4Address(int(h.ipv4_src[row]))
            dst = ipaddress.IPv4Address(int(h.ipv4_dst[row]))
        stream = Stream(key, src, dst, int(h.sport[row]), int(h.dport[row]), last_seen=now)
        self.streams[key] = stream
        self.stats["streams_opened"] += 1
        return stream

    def _segment(self, stream: Stream, seq: int, flags: int, data: bytes) -> None:
        if flags & _RST:
            self._close(stream, "rst")
            return
        if flags & _SYN:
            if stream.base is None:
                stream.base = (seq + 1) % _MOD
            seq = (seq + 1) % _MOD  # the SYN occupies one sequence number
        elif stream.base is None:
            if self.require_syn:
                self.stats["no_syn"] += 1
                return
            stream.base = seq
        assert stream.base is not None
        offset = stream.delivered + _signed(seq - stream.base - stream.delivered)
        if abs(offset - stream.delivered) > _MAX_JUMP:
            self.stats["out_of_window"] += 1
            return
        if flags & _FIN and stream.fin_at is None:
            stream.fin_at = offset + len(data)
        if data:
            self._insert(stream, offset, data)
        if stream.fin_at is not None and stream.delivered >= stream.fin_at:
            self._close(stream, "fin")

    def _insert(self, stream: Stream, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end <= stream.delivered:
            self.stats["duplicate_bytes"] += len(data)
            return
        if offset <= stream.delivered:
            skip = stream.delivered - offset
            self.stats["duplicate_bytes"] += skip
            self._deliver(stream, data[skip:])
            self._drain(stream)
            return
        if stream.buffered + len(data) > self.max_buffer:
            self.stats["buffer_overflow"] += 1
            return
        self.stats["out_of_order"] += 1
        bisect.insort(stream.pending, (offset, data), key=lambda item: item[0])
        stream.buffered += len(data)

    def _drain(self, stream: Stream) -> None:
        pending = stream.pending
        while pending and pending[0][0] <= stream.delivered:
            offset, data = pending.pop(0)
            stream.buffered -= len(data)
            skip = stream.delivered - offset
            if skip >= len(data):
                self.stats["duplicate_bytes"] += len(data)
                continue
            self.stats["duplicate_bytes"] += skip
            self._deliver(stream, data[skip:])

    def _deliver(self, stream: Stream, data: bytes) -> None:
        if not data:
            return
        stream.delivered += len(data)
        self.stats["bytes_delivered"] += len(data)
        self.on_data(stream, data)

    def _close(self, stream: Stream, reason: str) -> None:
        if stream.closed is not None:
            return
        stream.closed = reason
        stream.pending.clear()
        stream.buffered = 0
        self.stats[f"closed_{reason}"] = self.stats.get(f"closed_{reason}", 0) + 1
        if self.on_close is not None:
            self.on_close(stream, reason)

    # -- ending ---------------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Forget streams idle for more than `timeout` (open ones are closed as "timeout")."""
        idle = [k for k, s in self.streams.items() if now - s.last_seen > self.timeout]
        for key in idle:
            self._close(self.streams.pop(key), "timeout")
        return len(idle)

    def close_all(self, reason: str = "shutdown") -> None:
        """Close and forget every stream."""
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            self._close(stream, reason)


class Reassemble(Operator):
    """Bytestream reassembly as a graph operator: a tap that lets packets pass unchanged.

    Give it a callback `on_data(stream, data)` (options go to `Reassembler`) or a ready
    `Reassembler`. Idle streams are swept every `sweep_every` seconds.
    """

    kind = "bytestream"
    needs = EdgeType.PARSED

    def __init__(
        self,
        on_data: StreamCallback | Reassembler,
        name: str | None = None,
        *,
        sweep_every: float | None = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(name)
        if isinstance(on_data, Reassembler):
            if options:
                raise ValueError("options go to the Reassembler when one is given")
            self.reassembler = on_data
        else:
            self.reassembler = Reassembler(on_data, **options)
        self.sweep_every = sweep_every

    def attach(self, timers: Timers) -> None:
        if self.sweep_every:
            timers.every(self.sweep_every, self._sweep, name=f"{self.name}.expire")

    def _sweep(self, now: float) -> None:
        self.reassembler.expire(now)
        self._publish()

    def _publish(self) -> None:
        extra = self.counters.extra
        extra.update(self.reassembler.stats)
        extra["streams"] = len(self.reassembler.streams)

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        assert headers is not None
        self.reassembler.feed(batch, headers, now)
        self._publish()
        return [(batch, headers)]
