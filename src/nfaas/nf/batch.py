"""Packet batches: many packets in one contiguous byte buffer, addressed by offset and length.

A `PacketBatch` is the unit that flows through NF graphs. Its packet bytes live in a single
uint8 numpy array (`data`); packet *i* is `data[offsets[i] : offsets[i] + lengths[i]]`.
Per-packet metadata (receive time, input port, and optional extra columns in `meta`) are
arrays aligned with the packets. Everything here works on whole arrays: selecting, gathering
and rewriting never creates one Python object per packet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["PacketBatch", "packed_offsets", "ragged_copy"]

U8 = NDArray[np.uint8]
I64 = NDArray[np.int64]
Index = slice | NDArray[np.intp] | NDArray[np.bool_]

_UINT: dict[int, type[np.unsignedinteger[Any]]] = {
    1: np.uint8,
    2: np.uint16,
    4: np.uint32,
    8: np.uint64,
}

# Average run length from which a slice copy per run beats a vectorised byte gather.
_LONG_RUN_BYTES = 256
# Bytes moved per vectorised chunk of a ragged copy: bounds the int64 index temporaries.
_COPY_CHUNK_BYTES = 1 << 16


def _as_offsets(values: ArrayLike, n: int, what: str) -> I64:
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.full(n, arr, dtype=np.int64)
    if arr.shape != (n,):
        raise ValueError(f"{what}: expected shape ({n},), got {arr.shape}")
    return arr.astype(np.int64, copy=False)


def packed_offsets(lengths: ArrayLike) -> I64:
    """Start of each packet when the packets lie back to back from offset 0."""
    lens = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(lens.shape[0], np.int64)
    if lens.shape[0] > 1:
        np.cumsum(lens[:-1], out=offsets[1:])
    return offsets


def ragged_copy(
    dst: U8, dst_starts: I64, src: U8, src_starts: I64, lengths: NDArray[np.integer[Any]]
) -> None:
    """Copy `lengths[i]` bytes from `src[src_starts[i]:]` to `dst[dst_starts[i]:]` for all i.

    Segments adjacent in both buffers are merged into runs first. Short runs are copied
    with one vectorised gather per ~megabyte chunk; long runs (where a memcpy per run
    beats byte-wise fancy indexing) with a slice assignment each.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    src_starts = np.asarray(src_starts, dtype=np.int64)
    dst_starts = np.asarray(dst_starts, dtype=np.int64)
    keep = lengths > 0
    if not keep.all():
        lengths, src_starts, dst_starts = lengths[keep], src_starts[keep], dst_starts[keep]
    n = lengths.shape[0]
    if n == 0:
        return
    ends = src_starts + lengths
    joined = (src_starts[1:] == ends[:-1]) & (dst_starts[1:] == dst_starts[:-1] + lengths[:-1])
    if joined.any():
        first = np.flatnonzero(np.concatenate(([True], ~joined)))
        lengths = np.add.reduceat(lengths, first)
        src_starts, dst_starts = src_starts[first], dst_starts[first]
        n = lengths.shape[0]
    if int(lengths.sum()) >= _LONG_RUN_BYTES * n:
        for d, s, k in zip(dst_starts.tolist(), src_starts.tolist(), lengths.tolist(), strict=True):
            dst[d : d + k] = src[s : s + k]
        return
    ends = np.cumsum(lengths)
    start = 0
    while start < n:
        base = int(ends[start - 1]) if start else 0
        stop = int(np.searchsorted(ends, base + _COPY_CHUNK_BYTES, side="right"))
        stop = max(stop, start + 1)
        seg = lengths[start:stop]
        total = int(ends[stop - 1]) - base
        before = ends[start:stop] - seg - base  # offset of each segment in this chunk
        ramp = np.arange(total, dtype=np.int64)
        src_idx = np.repeat(src_starts[start:stop] - before, seg) + ramp
        dst_idx = np.repeat(dst_starts[start:stop] - before, seg) + ramp
        dst[dst_idx] = src[src_idx]
        start = stop


class PacketBatch:
    """A batch of packets in one contiguous uint8 buffer.

    Attributes:
        data: the byte buffer (packets may share it with other batches when built with
            `copy=False`).
        offsets: int64 start of each packet in `data`.
        lengths: int32 length of each packet.
        timestamps_ns: int64 receive time, nanoseconds since the epoch (0 when unknown).
        port: uint16 input port (pcapng interface id, NIC queue, ...).
        meta: extra per-packet columns (name -> array of len(batch)); they follow the packets
            through `select`, `concat` and `rebuild`.
    """

    __slots__ = ("data", "lengths", "meta", "offsets", "port", "timestamps_ns")

    def __init__(
        self,
        data: U8,
        offsets: ArrayLike,
        lengths: ArrayLike,
        timestamps_ns: ArrayLike | None = None,
        port: ArrayLike | None = None,
        meta: Mapping[str, NDArray[Any]] | None = None,
    ) -> None:
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError(f"data must be a 1-D uint8 array, got {data.dtype} {data.shape}")
        offs = np.asarray(offsets, dtype=np.int64)
        n = offs.shape[0]
        lens = np.asarray(lengths).astype(np.int32, copy=False)
        if lens.shape != (n,):
            raise ValueError(f"lengths: expected shape ({n},), got {lens.shape}")
        if n and (
            int(offs.min()) < 0 or int(lens.min()) < 0 or int((offs + lens).max()) > data.size
        ):
            raise ValueError("packet offsets/lengths reach outside the data buffer")
        self.data: U8 = data
        self.offsets: I64 = offs
        self.lengths: NDArray[np.int32] = lens
        self.timestamps_ns: I64 = (
            np.zeros(n, np.int64)
            if timestamps_ns is None
            else _as_offsets(timestamps_ns, n, "timestamps_ns")
        )
        self.port: NDArray[np.uint16] = (
            np.zeros(n, np.uint16)
            if port is None
            else np.broadcast_to(np.asarray(port), (n,)).astype(np.uint16)
        )
        self.meta: dict[str, NDArray[Any]] = {}
        for name, column in (meta or {}).items():
            col = np.asarray(column)
            if col.shape[:1] != (n,):
                raise ValueError(f"meta column {name!r} has {col.shape[:1]} rows, expected {n}")
            self.meta[name] = col

    # -- construction -------------------------------------------------------------------

    @classmethod
    def empty(cls) -> PacketBatch:
        return cls(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int32))

    @classmethod
    def from_bytes(
        cls,
        packets: Iterable[bytes | bytearray | memoryview],
        timestamps_ns: ArrayLike | None = None,
        port: ArrayLike | int = 0,
    ) -> PacketBatch:
        """Batch from a list of packets (copied into one buffer)."""
        pkts = [bytes(p) for p in packets]
        lens = np.fromiter((len(p) for p in pkts), dtype=np.int64, count=len(pkts))
        data = np.frombuffer(b"".join(pkts), dtype=np.uint8).copy()
        return cls(data, packed_offsets(lens), lens, timestamps_ns, port)

    @classmethod
    def from_array(cls, frames: NDArray[np.uint8], lengths: ArrayLike | None = None) -> PacketBatch:
        """Batch from a 2-D (n, width) array of frames; `lengths` may trim each row."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        n, width = frames.shape
        lens = np.full(n, width, np.int64) if lengths is None else np.asarray(lengths, np.int64)
        if n and int(lens.max()) > width:
            raise ValueError("a length exceeds the frame width")
        return cls(frames.reshape(-1), np.arange(n, dtype=np.int64) * width, lens)

    @staticmethod
    def concat(batches: Sequence[PacketBatch]) -> PacketBatch:
        """One compact batch holding the packets of all `batches`, in order."""
        batches = [b for b in batches if len(b)] or list(batches[:1])
        if not batches:
            return PacketBatch.empty()
        if len(batches) == 1:
            return batches[0].compact()
        parts = [b.compact() for b in batches]
        sizes = [p.data.size for p in parts]
        shift = np.cumsum([0, *sizes[:-1]])
        offsets = np.concatenate([p.offsets + s for p, s in zip(parts, shift, strict=True)])
        names = set(parts[0].meta).intersection(*(p.meta for p in parts[1:]))
        return PacketBatch(
            np.concatenate([p.data for p in parts]),
            offsets,
            np.concatenate([p.lengths for p in parts]),
            np.concatenate([p.timestamps_ns for p in parts]),
            np.concatenate([p.port for p in parts]),
            {k: np.concatenate([p.meta[k] for p in parts]) for k in sorted(names)},
        )

    # -- inspection ---------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def __repr__(self) -> str:
        return f"PacketBatch({len(self)} packets, {self.total_bytes} bytes)"

    @property
    def total_bytes(self) -> int:
        return int(self.lengths.sum(dtype=np.int64))

    def packet(self, i: int) -> bytes:
        start = int(self.offsets[i])
        return self.data[start : start + int(self.lengths[i])].tobytes()

    def view(self, i: int) -> U8:
        """Packet `i` as a writable view into `data` (no copy)."""
        start = int(self.offsets[i])
        return self.data[start : start + int(self.lengths[i])]

    def to_list(self) -> list[bytes]:
        raw = self.data.tobytes()
        return [
            raw[o : o + n]
            for o, n in zip(self.offsets.tolist(), self.lengths.tolist(), strict=True)
        ]

    def is_compact(self) -> bool:
        """True when packets lie back to back from offset 0 and fill `data` exactly."""
        n = len(self)
        if n == 0:
            return self.data.size == 0
        ends = self.offsets + self.lengths
        return (
            int(self.offsets[0]) == 0
            and bool(np.array_equal(self.offsets[1:], ends[:-1]))
            and int(ends[-1]) == self.data.size
        )

    # -- selection ----------------------------------------------------------------------

    def select(self, which: Index, copy: bool = True) -> PacketBatch:
        """The packets picked by a boolean mask, an index array or a slice.

        With `copy=True` the result owns a compact buffer; with `copy=False` it shares
        `data` with this batch (cheaper, but in-place writes are then visible in both).
        """
        offsets = self.offsets[which]
        lengths = self.lengths[which]
        timestamps = self.timestamps_ns[which]
        port = self.port[which]
        meta = {k: v[which] for k, v in self.meta.items()}
        if not copy:
            return PacketBatch(self.data, offsets, lengths, timestamps, port, meta)
        new_offsets = packed_offsets(lengths)
        data = np.empty(int(lengths.sum(dtype=np.int64)), np.uint8)
        ragged_copy(data, new_offsets, self.data, offsets, lengths)
        return PacketBatch(data, new_offsets, lengths, timestamps, port, meta)

    def __getitem__(self, which: Index) -> PacketBatch:
        return self.select(which)

    def compact(self) -> PacketBatch:
        """This batch if already compact, else a compact copy."""
        return self if self.is_compact() else self.select(slice(None))

    def split(self, size: int) -> list[PacketBatch]:
        """Consecutive sub-batches of at most `size` packets (sharing `data`)."""
        return [self.select(slice(i, i + size), copy=False) for i in range(0, len(self), size)]

    # -- reading and writing fields at per-packet offsets -------------------------------

    def _positions(self, rel: ArrayLike, width: int, idx: Index | None) -> I64:
        offsets = self.offsets if idx is None else self.offsets[idx]
        lengths = self.lengths if idx is None else self.lengths[idx]
        rel_arr = np.asarray(rel, dtype=np.int64)
        if rel_arr.ndim == 0:
            rel_arr = np.broadcast_to(rel_arr, offsets.shape)
        bad = (rel_arr < 0) | (rel_arr + width > lengths)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise IndexError(
                f"field of {width} bytes at packet offset {int(rel_arr[first])} is outside "
                f"packet {first} of the selection (length {int(lengths[first])})"
            )
        return offsets + rel_arr

    def read_bytes(self, rel: ArrayLike, width: int, idx: Index | None = None) -> U8:
        """(n, width) bytes at per-packet offset `rel` (of the packets picked by `idx`)."""
        pos = self._positions(rel, width, idx)
        return self.data[pos[:, None] + np.arange(width)]

    def read_uint(self, rel: ArrayLike, width: int, idx: Index | None = None) -> NDArray[Any]:
        """Big-endian unsigned integers of 1, 2, 4 or 8 bytes at per-packet offset `rel`."""
        if width == 1:
            return self.data[self._positions(rel, 1, idx)]
        raw = self.read_bytes(rel, width, idx)
        return raw.view(f">u{width}")[:, 0].astype(_UINT[width])

    def write_bytes(self, rel: ArrayLike, values: ArrayLike, idx: Index | None = None) -> None:
        """Write (n, width) bytes (or one row broadcast to all) at per-packet offset `rel`."""
        vals = np.asarray(values, dtype=np.uint8)
        width = vals.shape[-1]
        pos = self._positions(rel, width, idx)
        self.data[pos[:, None] + np.arange(width)] = vals

    def write_uint(
        self, rel: ArrayLike, values: ArrayLike, width: int, idx: Index | None = None
    ) -> None:
        """Write big-endian unsigned integers of 1, 2, 4 or 8 bytes at per-packet offset `rel`."""
        pos = self._positions(rel, width, idx)
        vals = np.asarray(values).astype(np.uint64)
        if width == 1:
            self.data[pos] = vals.astype(np.uint8)
            return
        vals = np.broadcast_to(vals, pos.shape)
        raw = vals.astype(f">u{width}").view(np.uint8).reshape(-1, width)
        self.data[pos[:, None] + np.arange(width)] = raw

    # -- changing packet lengths (encap, decap, trimming) -------------------------------

    def rebuild(
        self,
        start: ArrayLike = 0,
        end: ArrayLike | None = None,
        prefix: bytes | NDArray[np.uint8] | PacketBatch | None = None,
    ) -> PacketBatch:
        """New compact batch whose packet i is `prefix_i + packet_i[start_i:end_i]`.

        `start`/`end` are per-packet offsets (or scalars; `end` defaults to the packet
        length). `prefix` is one header for all packets (bytes), one fixed-width header per
        packet (an (n, k) uint8 array, e.g. a template with per-packet fields written in),
        or variable-length headers given as a PacketBatch of n prefixes. Decapsulation is
        `rebuild(start=inner_offsets)`; encapsulation is `rebuild(prefix=outer_headers)`.
        Metadata follow the packets.
        """
        n = len(self)
        starts = _as_offsets(start, n, "start")
        ends = self.lengths.astype(np.int64) if end is None else _as_offsets(end, n, "end")
        ends = np.minimum(ends, self.lengths)
        starts = np.clip(starts, 0, ends)
        body = ends - starts
        if prefix is None:
            pre_len = np.zeros(n, np.int64)
        elif isinstance(prefix, PacketBatch):
            if len(prefix) != n:
                raise ValueError(f"{len(prefix)} prefixes for {n} packets")
            pre_len = prefix.lengths.astype(np.int64)
        else:
            pre = np.asarray(
                np.frombuffer(prefix, np.uint8) if isinstance(prefix, bytes) else prefix,
                dtype=np.uint8,
            )
            if pre.ndim == 2 and pre.shape[0] != n:
                raise ValueError(f"{pre.shape[0]} prefixes for {n} packets")
            pre_len = np.full(n, pre.shape[-1], np.int64)
        total = pre_len + body
        new_offsets = packed_offsets(total)
        data = np.empty(int(total.sum()), np.uint8)
        if isinstance(prefix, PacketBatch):
            ragged_copy(data, new_offsets, prefix.data, prefix.offsets, pre_len)
        elif prefix is not None and n:
            k = int(pre_len[0])
            if k:
                data[new_offsets[:, None] + np.arange(k)] = pre
        ragged_copy(data, new_offsets + pre_len, self.data, self.offsets + starts, body)
        return PacketBatch(
            data, new_offsets, total, self.timestamps_ns.copy(), self.port.copy(), dict(self.meta)
        )
