"""Reading and writing capture files (classic pcap and pcapng) as streams of PacketBatch.

Readers yield batches of at most `batch_size` packets while reading the file in chunks, so a
capture larger than memory can be processed batch by batch. Both pcap byte orders and the
micro- and nanosecond variants are read; pcapng sections of either byte order, several
interfaces (with their timestamp resolutions and offsets) and sections, Enhanced / Simple /
obsolete Packet Blocks are read and other blocks skipped. A malformed file raises
`CaptureFormatError` naming the byte offset and what is wrong.

Batches from readers carry `timestamps_ns`, `port` (pcap: 0; pcapng: the interface
number, counted over all sections of the file) and a `wire_length` meta column (the
original length when a packet was captured truncated). Writers produce files Wireshark
reads; the pcapng writer declares one interface per port number so ports round-trip.
"""

from __future__ import annotations

import struct
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from nfaas.nf.batch import PacketBatch, packed_offsets, ragged_copy
from nfaas.nf.closing import Closing

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "CaptureFormatError",
    "Interface",
    "PcapReader",
    "PcapWriter",
    "PcapngReader",
    "PcapngWriter",
    "open_capture",
    "read_capture",
    "read_capture_all",
    "write_pcap",
    "write_pcapng",
]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
BLOCK_IDB, BLOCK_PB, BLOCK_SPB, BLOCK_EPB = 1, 2, 3, 6
OPT_END, OPT_IF_NAME, OPT_IF_TSRESOL, OPT_IF_TSOFFSET, OPT_SHB_USERAPPL = 0, 2, 9, 14, 4
MAX_SNAPLEN = 1 << 28  # refuse absurd record sizes before allocating for them
DEFAULT_BATCH = 4096
_TS_LIMIT = 1 << 63  # timestamps are int64 nanoseconds
_READ_CHUNK = 1 << 20

Source = str | Path | IO[bytes]


class CaptureFormatError(ValueError):
    """A capture file is malformed; `offset` is the byte offset of the problem."""

    def __init__(self, offset: int, problem: str) -> None:
        self.offset = offset
        self.problem = problem
        super().__init__(f"{problem} (at byte offset {offset})")


# -- buffered input -------------------------------------------------------------------------


class _Stream:
    """A file read in large chunks; `buf[pos:]` is the unread part, `base` its file offset."""

    def __init__(self, f: IO[bytes], before_refill: Callable[[], None], head: bytes) -> None:
        self.f = f
        self.buf = head
        self.pos = 0
        self.base = 0
        self.eof = False
        self.before_refill = before_refill

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def available(self) -> int:
        return len(self.buf) - self.pos

    def ensure(self, k: int) -> int:
        """Try to have `k` unread bytes in `buf`; returns how many there are."""
        have = len(self.buf) - self.pos
        if have >= k or self.eof:
            return have
        self.before_refill()  # positions into the old buffer are about to go stale
        parts = [self.buf[self.pos :]]
        while have < k:
            chunk = self.f.read(max(_READ_CHUNK, k - have))
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        self.base += self.pos
        self.buf = b"".join(parts)
        self.pos = 0
        return have


class _Collector:
    """Packets of the batch being built: positions in the current stream buffer, copied
    into numpy parts whenever that buffer is about to be replaced (`flush`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pos: list[int] = []  # data start in `buf`, for packets not yet flushed
        self.caplen: list[int] = []
        self.rows: list[tuple[int, int, int]] = []  # (timestamp ns, wire length, port)
        self.parts: list[NDArray[np.uint8]] = []
        self.part_lengths: list[NDArray[np.int64]] = []
        self.buf = b""

    def flush(self) -> None:
        if not self.pos:
            return
        lengths = np.asarray(self.caplen, np.int64)
        out = np.empty(int(lengths.sum()), np.uint8)
        src = np.frombuffer(self.buf, np.uint8)
        ragged_copy(out, packed_offsets(lengths), src, np.asarray(self.pos, np.int64), lengths)
        self.parts.append(out)
        self.part_lengths.append(lengths)
        # clear() rather than new lists: readers hold bound append methods
        self.pos.clear()
        self.caplen.clear()

    def add(self, pos: int, caplen: int, ts_ns: int, wire: int, port: int) -> None:
        self.pos.append(pos)
        self.caplen.append(caplen)
        self.rows.append((ts_ns, wire, port))

    def take(self) -> PacketBatch | None:
        """The collected packets as a batch (None if there are none); starts a new one."""
        if not self.rows:
            return None
        self.flush()
        lengths = np.concatenate(self.part_lengths)
        rows = np.array(self.rows, dtype=np.int64).reshape(-1, 3)
        batch = PacketBatch(
            np.concatenate(self.parts),
            packed_offsets(lengths),
            lengths,
            rows[:, 0],
            rows[:, 2].astype(np.uint16),
            {"wire_length": rows[:, 1].copy()},
        )
        self.reset()
        return batch


def _open(source: Source, mode: str) -> tuple[IO[bytes], bool]:
    if isinstance(source, str | Path):
        return open(source, mode), True  # closed by the reader/writer
    return source, False


class _CaptureReader(Closing):
    """What both readers share: the source read through a `_Stream`, the batch being
    collected, and iteration batch by batch (the source is closed at the end)."""

    def __init__(self, source: Source, batch_size: int, head: bytes) -> None:
        """`head`: bytes already read from the start of `source` (by `open_capture`)."""
        self._f, self._owned = _open(source, "rb")
        self.batch_size = batch_size
        self._col = _Collector()
        self._s = _Stream(self._f, self._col.flush, head)

    def __iter__(self) -> Iterator[PacketBatch]:
        try:
            while (batch := self._read_batch()) is not None:
                yield batch
        finally:
            self.close()

    @abstractmethod
    def _read_batch(self) -> PacketBatch | None:
        """The next batch of at most `batch_size` packets; None at the end of the file."""

    def _window(self) -> tuple[bytes, int, int]:
        """(buffer, position, end) of the stream for a fast-path scan; the collector
        takes packet positions in that buffer."""
        buf = self._col.buf = self._s.buf
        return buf, self._s.pos, len(buf)

    def close(self) -> None:
        if self._owned:
            self._f.close()


# -- classic pcap ---------------------------------------------------------------------------


class PcapReader(_CaptureReader):
    """Iterates over a classic pcap file as batches of at most `batch_size` packets."""

    def __init__(
        self, source: Source, batch_size: int = DEFAULT_BATCH, *, head: bytes = b""
    ) -> None:
        """`head`: bytes already read from the start of `source` (by `open_capture`)."""
        super().__init__(source, batch_size, head)
        have = self._s.ensure(24)
        if have < 4:
            raise CaptureFormatError(0, f"file too short for a capture header ({have} bytes)")
        magic_le = struct.unpack_from("<I", self._s.buf, 0)[0]
        magic_be = struct.unpack_from(">I", self._s.buf, 0)[0]
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self.byteorder, magic = "<", magic_le
        elif magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self.byteorder, magic = ">", magic_be
        else:
            raise CaptureFormatError(0, f"bad magic 0x{magic_be:08x}: not a pcap file")
        if have < 24:
            raise CaptureFormatError(have, "truncated pcap file header (24 bytes expected)")
        self.nanosecond = magic == PCAP_MAGIC_NS
        major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from(
            self.byteorder + "HHiIII", self._s.buf, 4
        )
        if major != 2:
            raise CaptureFormatError(4, f"unsupported pcap version {major}.{minor}")
        self.snaplen = snaplen
        self.linktype = linktype & 0x0FFFFFFF  # upper bits carry FCS information
        self._s.pos = 24
        self._record = struct.Struct(self.byteorder + "IIII")

    def _read_batch(self) -> PacketBatch | None:
        s, col = self._s, self._col
        unpack = self._record.unpack_from
        frac_ns = 1 if self.nanosecond else 1000
        limit = self.snaplen if 0 < self.snaplen <= MAX_SNAPLEN else MAX_SNAPLEN
        add_pos, add_caplen, add_row = col.pos.append, col.caplen.append, col.rows.append
        buf, pos, end = self._window()
        count = 0
        while count < self.batch_size:
            # Fast path: the whole record is in the buffer and plausible.
            if pos + 16 <= end:
                sec, frac, caplen, wire = unpack(buf, pos)
                if caplen <= limit and pos + 16 + caplen <= end:
                    add_pos(pos + 16)
                    add_caplen(caplen)
                    add_row((sec * 1_000_000_000 + frac * frac_ns, wire, 0))
                    pos += 16 + caplen
                    count += 1
                    continue
            s.pos = pos
            if not self._buffer_record(limit):
                return col.take()  # end of file (the stream position is already current)
            buf, pos, end = self._window()
        s.pos = pos
        return col.take()

    def _buffer_record(self, limit: int) -> bool:
        """Get the next record wholly into the buffer; False at the end of the file."""
        s = self._s
        have = s.ensure(16)
        if have == 0:
            return False
        if have < 16:
            raise CaptureFormatError(s.offset, f"truncated record header ({have} of 16 bytes)")
        caplen = self._record.unpack_from(s.buf, s.pos)[2]
        if caplen > limit:
            raise CaptureFormatError(s.offset + 8, f"record caplen {caplen} > snaplen {limit}")
        start = s.offset
        if s.ensure(16 + caplen) < 16 + caplen:
            raise CaptureFormatError(
                start + 16,
                f"truncated packet data: record at offset {start} has caplen {caplen}, "
                f"only {s.available() - 16} bytes remain",
            )
        return True


# -- pcapng ---------------------------------------------------------------------------------


@dataclass
class Interface:
    """A pcapng interface (IDB): link type, snap length and timestamp scaling."""

    linktype: int
    snaplen: int
    name: str = ""
    tsresol: int = 6  # exponent byte as in if_tsresol: bit 7 set means a power of two
    tsoffset_s: int = 0

    def to_ns(self, ts: int) -> int:
        if self.tsresol & 0x80:
            ns = (ts * 1_000_000_000) >> (self.tsresol & 0x7F)
        elif self.tsresol <= 9:
            ns = ts * 10 ** (9 - self.tsresol)
        else:
            ns = ts // 10 ** (self.tsresol - 9)
        return ns + self.tsoffset_s * 1_000_000_000


class PcapngReader(_CaptureReader):
    """Iterates over a pcapng file as batches; `interfaces` fills in as IDBs are read."""

    def __init__(
        self, source: Source, batch_size: int = DEFAULT_BATCH, *, head: bytes = b""
    ) -> None:
        """`head`: bytes already read from the start of `source` (by `open_capture`)."""
        super().__init__(source, batch_size, head)
        self.interfaces: list[Interface] = []  # over all sections, in file order
        self._section_first = 0  # index in `interfaces` of this section's interface 0
        self.byteorder = "<"
        have = self._s.ensure(12)
        if have < 4 or struct.unpack_from("<I", self._s.buf, 0)[0] != PCAPNG_SHB:
            raise CaptureFormatError(
                0, "bad magic: not a pcapng file (no section header block at offset 0)"
            )

    def _block(self) -> tuple[int, int, int] | None:
        """Next block's (type, total length, file offset), fully buffered; None at EOF."""
        s = self._s
        have = s.ensure(12)
        if have == 0:
            return None
        start = s.offset
        if have < 8:
            raise CaptureFormatError(start, f"truncated block header ({have} of 8 bytes)")
        btype = struct.unpack_from("<I", s.buf, s.pos)[0]
        if btype == PCAPNG_SHB:
            if have < 12:
                raise CaptureFormatError(start, "truncated section header block")
            bom = s.buf[s.pos + 8 : s.pos + 12]
            if bom == struct.pack("<I", PCAPNG_BOM):
                self.byteorder = "<"
            elif bom == struct.pack(">I", PCAPNG_BOM):
                self.byteorder = ">"
            else:
                raise CaptureFormatError(start + 8, f"bad byte-order magic 0x{bom.hex()}")
        o = self.byteorder
        btype, blen = struct.unpack_from(o + "II", s.buf, s.pos)
        if blen < 12 or blen % 4:
            raise CaptureFormatError(
                start + 4, f"bad block length {blen} (block type 0x{btype:08x})"
            )
        if blen > MAX_SNAPLEN:
            raise CaptureFormatError(start + 4, f"block length {blen} is implausibly large")
        if s.ensure(blen) < blen:
            raise CaptureFormatError(
                start, f"truncated block: length {blen}, only {s.available()} bytes remain"
            )
        trailer = struct.unpack_from(o + "I", s.buf, s.pos + blen - 4)[0]
        if trailer != blen:
            raise CaptureFormatError(
                start + blen - 4,
                f"block length mismatch: header says {blen}, trailer says {trailer}",
            )
        return btype, blen, start

    def _options(self, at: int, end: int) -> Iterator[tuple[int, bytes]]:
        s, o = self._s, self.byteorder
        while at + 4 <= end:
            code, length = struct.unpack_from(o + "HH", s.buf, at)
            if code == OPT_END:
                return
            if at + 4 + length > end:
                raise CaptureFormatError(
                    s.base + at, f"option {code} of length {length} overruns its block"
                )
            yield code, s.buf[at + 4 : at + 4 + length]
            at += 4 + length + (-length % 4)

    def _interface(self, number: int, offset: int) -> tuple[int, Interface]:
        index = self._section_first + number
        if number >= len(self.interfaces) - self._section_first:
            raise CaptureFormatError(offset, f"packet refers to undeclared interface {number}")
        return index, self.interfaces[index]

    def _fast_interfaces(self) -> list[tuple[int, int, int]]:
        """(file-wide index, ns per timestamp unit, snaplen) of this section's interfaces
        whose clock is a decimal fraction of a second no finer than 1 ns, without offset;
        others get a multiplier of 0 and go through the general path."""
        fast = []
        for index in range(self._section_first, len(self.interfaces)):
            iface = self.interfaces[index]
            decimal = not iface.tsresol & 0x80 and iface.tsresol <= 9 and not iface.tsoffset_s
            mult = 10 ** (9 - iface.tsresol) if decimal else 0
            fast.append((index, mult, iface.snaplen))
        return fast

    def _block_structs(self) -> tuple[struct.Struct, struct.Struct, struct.Struct]:
        """Block header (type, length), EPB fields and one word, in this section's order."""
        o = self.byteorder
        return struct.Struct(o + "II"), struct.Struct(o + "IIIII"), struct.Struct(o + "I")

    def _read_batch(self) -> PacketBatch | None:
        s, col = self._s, self._col
        head, epb, word = self._block_structs()
        add_pos, add_caplen, add_row = col.pos.append, col.caplen.append, col.rows.append
        fast = self._fast_interfaces()
        buf, pos, end = self._window()
        count = 0
        while count < self.batch_size:
            # Fast path: a well-formed EPB wholly in the buffer, on a plain-clock interface.
            if pos + 32 <= end:
                btype, blen = head.unpack_from(buf, pos)
                if btype == BLOCK_EPB and blen >= 32 and not blen & 3 and pos + blen <= end:
                    number, hi, lo, caplen, wire = epb.unpack_from(buf, pos + 8)
                    if (
                        number < len(fast)
                        and caplen <= blen - 32
                        and word.unpack_from(buf, pos + blen - 4)[0] == blen
                    ):
                        index, mult, snaplen = fast[number]
                        ts = ((hi << 32) | lo) * mult
                        if mult and ts < _TS_LIMIT and not 0 < snaplen < caplen:
                            add_pos(pos + 28)
                            add_caplen(caplen)
                            add_row((ts, wire, index))
                            pos += blen
                            count += 1
                            continue
            s.pos = pos
            block = self._block()
            if block is None:
                return col.take()  # end of file (the stream position is already current)
            count += self._general_block(*block)
            s.pos += block[1]
            if block[0] in (PCAPNG_SHB, BLOCK_IDB):
                head, epb, word = self._block_structs()
                fast = self._fast_interfaces()
            buf, pos, end = self._window()
        s.pos = pos
        return col.take()

    def _general_block(self, btype: int, blen: int, start: int) -> int:
        """Handle one buffered block at the stream position; returns packets added."""
        s, o, p = self._s, self.byteorder, self._s.pos
        if btype == PCAPNG_SHB:
            if blen < 28:
                raise CaptureFormatError(start, f"section header block too short ({blen} bytes)")
            major, minor = struct.unpack_from(o + "HH", s.buf, p + 12)
            if major != 1:
                raise CaptureFormatError(start + 12, f"unsupported pcapng version {major}.{minor}")
            self._section_first = len(self.interfaces)
        elif btype == BLOCK_IDB:
            if blen < 20:
                raise CaptureFormatError(start, f"interface block too short ({blen} bytes)")
            linktype, _, snaplen = struct.unpack_from(o + "HHI", s.buf, p + 8)
            iface = Interface(linktype, snaplen)
            for code, value in self._options(p + 16, p + blen - 4):
                if code == OPT_IF_TSRESOL and value:
                    iface.tsresol = value[0]
                elif code == OPT_IF_TSOFFSET and len(value) == 8:
                    iface.tsoffset_s = struct.unpack(o + "q", value)[0]
                elif code == OPT_IF_NAME:
                    iface.name = value.decode("utf-8", "replace")
            self.interfaces.append(iface)
        elif btype in (BLOCK_EPB, BLOCK_PB):
            if blen < 32:
                raise CaptureFormatError(start, f"packet block too short ({blen} bytes)")
            if btype == BLOCK_EPB:
                number, hi, lo, caplen, wire = struct.unpack_from(o + "IIIII", s.buf, p + 8)
            else:
                number, _, hi, lo, caplen, wire = struct.unpack_from(o + "HHIIII", s.buf, p + 8)
            index, iface = self._interface(number, start + 8)
            if caplen > blen - 32:
                raise CaptureFormatError(
                    start + 20, f"caplen {caplen} exceeds its block of {blen} bytes"
                )
            if 0 < iface.snaplen < caplen:
                raise CaptureFormatError(start + 20, f"caplen {caplen} > snaplen {iface.snaplen}")
            ts = iface.to_ns((hi << 32) | lo)
            if not -_TS_LIMIT <= ts < _TS_LIMIT:
                raise CaptureFormatError(start + 12, f"timestamp {ts} ns is out of range")
            self._col.add(p + 28, caplen, ts, wire, index)
            return 1
        elif btype == BLOCK_SPB:
            if blen < 16:
                raise CaptureFormatError(start, f"simple packet block too short ({blen} bytes)")
            index, iface = self._interface(0, start)
            wire = struct.unpack_from(o + "I", s.buf, p + 8)[0]
            caplen = min(wire, blen - 16)
            if iface.snaplen:
                caplen = min(caplen, iface.snaplen)
            self._col.add(p + 12, caplen, 0, wire, index)
            return 1
        return 0


def open_capture(source: Source, batch_size: int = DEFAULT_BATCH) -> PcapReader | PcapngReader:
    """A reader for a pcap or pcapng file, chosen by its first four bytes."""
    f, owned = _open(source, "rb")
    reader: PcapReader | PcapngReader
    try:
        head = f.read(4)
        if len(head) == 4 and struct.unpack("<I", head)[0] == PCAPNG_SHB:
            reader = PcapngReader(f, batch_size, head=head)
        else:
            reader = PcapReader(f, batch_size, head=head)
    except BaseException:
        if owned:
            f.close()
        raise
    reader._owned = owned
    return reader


def read_capture(source: Source, batch_size: int = DEFAULT_BATCH) -> Iterator[PacketBatch]:
    """Batches of at most `batch_size` packets from a pcap or pcapng file."""
    return iter(open_capture(source, batch_size))


def read_capture_all(source: Source) -> PacketBatch:
    """The whole capture as one batch (for small files)."""
    return PacketBatch.concat(list(read_capture(source, 1 << 16)))


# -- writers --------------------------------------------------------------------------------


def _wire_lengths(batch: PacketBatch) -> NDArray[np.int64]:
    wire = batch.meta.get("wire_length")
    lengths = batch.lengths.astype(np.int64)
    return lengths if wire is None else np.maximum(np.asarray(wire, np.int64), lengths)


def _records(
    batch: PacketBatch, header: NDArray[Any], pad_to: int, trailer: bool
) -> NDArray[np.uint8]:
    """Concatenate per-packet `header` rows (n, k) uint32, packet bytes padded to
    `pad_to`, and (pcapng) a trailing copy of header column 1 (the block length)."""
    n = len(batch)
    head = header.view(np.uint8).reshape(n, -1)
    k = head.shape[1]
    lengths = batch.lengths.astype(np.int64)
    padded = lengths + (-lengths % pad_to)
    size = k + padded + (4 if trailer else 0)
    starts = packed_offsets(size)
    out = np.zeros(int(size.sum()), np.uint8)
    out[starts[:, None] + np.arange(k)] = head
    ragged_copy(out, starts + k, batch.data, batch.offsets, lengths)
    if trailer:
        tail = header[:, 1:2].view(np.uint8).reshape(n, 4)
        out[(starts + k + padded)[:, None] + np.arange(4)] = tail
    return out


class _CaptureWriter(Closing):
    """What both writers share: the target, closed at the end if opened here (else flushed)."""

    def __init__(self, target: Source) -> None:
        self._f, self._owned = _open(target, "wb")

    def close(self) -> None:
        if self._owned:
            self._f.close()
        else:
            self._f.flush()


class PcapWriter(_CaptureWriter):
    """Writes batches to a classic pcap file (nanosecond timestamps by default)."""

    def __init__(
        self,
        target: Source,
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = 262144,
        nanosecond: bool = True,
        byteorder: str = "<",
    ) -> None:
        if byteorder not in ("<", ">"):
            raise ValueError("byteorder is '<' or '>'")
        super().__init__(target)
        self.snaplen = snaplen
        self.nanosecond = nanosecond
        self.byteorder = byteorder
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        self._f.write(struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, batch: PacketBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        if int(batch.lengths.max()) > self.snaplen:
            raise ValueError(f"a packet is longer than the snaplen {self.snaplen}")
        ts = batch.timestamps_ns
        per_second = 1_000_000_000
        header = np.empty((n, 4), np.dtype(self.byteorder + "u4"))
        header[:, 0] = ts // per_second
        header[:, 1] = (ts % per_second) // (1 if self.nanosecond else 1000)
        header[:, 2] = batch.lengths
        header[:, 3] = _wire_lengths(batch)
        self._f.write(_records(batch, header, 1, trailer=False).tobytes())


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def _block(btype: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


class PcapngWriter(_CaptureWriter):
    """Writes batches to a pcapng file (little endian, one section, nanosecond timestamps).

    Interface *i* is declared for port *i*: interfaces up to the highest port seen are
    written before the first packet that needs them, so `port` survives a round trip.
    """

    def __init__(
        self,
        target: Source,
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = 0,
        application: str = "nfaas",
    ) -> None:
        super().__init__(target)
        self.linktype = linktype
        self.snaplen = snaplen
        self._declared = 0
        shb = struct.pack("<IHHq", PCAPNG_BOM, 1, 0, -1)
        shb += _option(OPT_SHB_USERAPPL, application.encode()) + _option(OPT_END, b"")
        self._f.write(_block(PCAPNG_SHB, shb))

    def _declare(self, up_to: int) -> None:
        blocks = []
        while self._declared <= up_to:
            body = struct.pack("<HHI", self.linktype, 0, self.snaplen)
            body += _option(OPT_IF_NAME, f"port{self._declared}".encode())
            body += _option(OPT_IF_TSRESOL, b"\x09") + _option(OPT_END, b"")
            blocks.append(_block(BLOCK_IDB, body))
            self._declared += 1
        self._f.write(b"".join(blocks))

    def write(self, batch: PacketBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        if self.snaplen and int(batch.lengths.max()) > self.snaplen:
            raise ValueError(f"a packet is longer than the snaplen {self.snaplen}")
        self._declare(int(batch.port.max()))
        lengths = batch.lengths.astype(np.int64)
        ts = batch.timestamps_ns.astype(np.uint64)
        header = np.empty((n, 7), np.dtype("<u4"))
        header[:, 0] = BLOCK_EPB
        header[:, 1] = 32 + lengths + (-lengths % 4)
        header[:, 2] = batch.port
        header[:, 3] = ts >> np.uint64(32)
        header[:, 4] = ts & np.uint64(0xFFFFFFFF)
        header[:, 5] = lengths
        header[:, 6] = _wire_lengths(batch)
        self._f.write(_records(batch, header, 4, trailer=True).tobytes())


def _batches(packets: PacketBatch | Iterable[PacketBatch]) -> Iterable[PacketBatch]:
    return [packets] if isinstance(packets, PacketBatch) else packets


def write_pcap(target: Source, packets: PacketBatch | Iterable[PacketBatch], **kw: Any) -> None:
    """Write a batch (or batches) to a classic pcap file; keywords go to `PcapWriter`."""
    with PcapWriter(target, **kw) as w:
        for batch in _batches(packets):
            w.write(batch)


def write_pcapng(target: Source, packets: PacketBatch | Iterable[PacketBatch], **kw: Any) -> None:
    """Write a batch (or batches) to a pcapng file; keywords go to `PcapngWriter`."""
    with PcapngWriter(target, **kw) as w:
        for batch in _batches(packets):
            w.write(batch)
