"""pcap / pcapng: round trips, streaming, files from Wireshark's tools, errors with offsets."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.pcap import (
    CaptureFormatError,
    PcapngReader,
    PcapngWriter,
    PcapWriter,
    open_capture,
    read_capture,
    read_capture_all,
    write_pcap,
    write_pcapng,
)

needs_wireshark = pytest.mark.skipif(
    shutil.which("tshark") is None or shutil.which("editcap") is None,
    reason="tshark/editcap not installed",
)
T0 = 1_700_000_000_123_456_789


def sample_batch(n: int = 12, ports: int = 1) -> PacketBatch:
    frames = []
    for i in range(n):
        src, dst = f"198.18.0.{i % 250 + 1}", f"198.19.0.{i % 250 + 1}"
        if i % 3 == 2:
            inner = B.ipv4(src, dst, 17, B.udp(1, 2, b"in", src=src, dst=dst))
            frames.append(B.gtpu_frame(src, dst, 0x1000 + i, inner))
        else:
            frames.append(B.udp_frame(src, dst, 40000 + i, 41000 + i, bytes(i)))
    return PacketBatch.from_bytes(
        frames, timestamps_ns=T0 + np.arange(n) * 1_000_001, port=np.arange(n) % ports
    )


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [True, False])
def test_pcap_round_trip(tmp_path: Path, byteorder: str, nanosecond: bool) -> None:
    batch = sample_batch()
    path = tmp_path / "x.pcap"
    write_pcap(
        path,
        [batch.select(slice(0, 5)), batch.select(slice(5, None))],
        nanosecond=nanosecond,
        byteorder=byteorder,
    )
    back = read_capture_all(path)
    assert back.to_list() == batch.to_list()
    expected_ts = batch.timestamps_ns if nanosecond else batch.timestamps_ns // 1000 * 1000
    assert back.timestamps_ns.tolist() == expected_ts.tolist()
    assert back.meta["wire_length"].tolist() == batch.lengths.tolist()
    with open_capture(path) as reader:
        assert reader.linktype == 1  # type: ignore[union-attr]
        assert reader.byteorder == byteorder


def test_pcapng_round_trip_keeps_ports(tmp_path: Path) -> None:
    batch = sample_batch(ports=4)
    path = tmp_path / "x.pcapng"
    write_pcapng(path, batch)
    reader = PcapngReader(path)
    batches = list(reader)
    back = PacketBatch.concat(batches)
    assert back.to_list() == batch.to_list()
    assert back.port.tolist() == batch.port.tolist()
    assert back.timestamps_ns.tolist() == batch.timestamps_ns.tolist()
    assert [i.name for i in reader.interfaces] == ["port0", "port1", "port2", "port3"]


class Dribble(io.RawIOBase):
    """A non-seekable stream that hands out at most 777 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = 777 if size < 0 else min(size, 777)
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 40), st.sampled_from(["pcap", "pcapng"]))
def test_streaming_batches_from_a_dribbling_stream(batch_size: int, kind: str) -> None:
    batch = sample_batch(n=97, ports=3)
    out = io.BytesIO()
    (write_pcap if kind == "pcap" else write_pcapng)(out, batch)
    batches = list(read_capture(Dribble(out.getvalue()), batch_size=batch_size))  # type: ignore[arg-type]
    assert all(len(b) == batch_size for b in batches[:-1])
    assert 0 < len(batches[-1]) <= batch_size
    assert PacketBatch.concat(batches).to_list() == batch.to_list()


def test_large_capture_streams_across_read_chunks(tmp_path: Path) -> None:
    frame = B.udp_frame("198.18.0.1", "198.18.0.2", 40000, 40001, bytes(1400))
    batch = PacketBatch.from_bytes([frame] * 2000, timestamps_ns=np.arange(2000))
    path = tmp_path / "big.pcapng"
    write_pcapng(path, batch)
    assert path.stat().st_size > 2 * (1 << 20)  # more than two read chunks
    sizes = []
    for b in read_capture(path, batch_size=900):
        sizes.append(len(b))
        assert set(b.to_list()) == {frame}
    assert sizes == [900, 900, 200]


def test_writers_refuse_packets_longer_than_snaplen(tmp_path: Path) -> None:
    batch = sample_batch()
    with (
        PcapWriter(tmp_path / "a.pcap", snaplen=50) as w,
        pytest.raises(ValueError, match="snaplen"),
    ):
        w.write(batch)
    with (
        PcapngWriter(tmp_path / "a.pcapng", snaplen=50) as w2,
        pytest.raises(ValueError, match="snaplen"),
    ):
        w2.write(batch)


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_with_blocks_close_what_they_opened_and_flush_what_they_were_given(
    tmp_path: Path, kind: str
) -> None:
    writer_class = PcapWriter if kind == "pcap" else PcapngWriter
    batch = sample_batch()
    with writer_class(tmp_path / f"a.{kind}") as w:
        w.write(batch)
    with pytest.raises(ValueError):  # the writer closed the file it opened
        w.write(batch)
    given_file = io.BytesIO()
    with writer_class(given_file) as w:
        w.write(batch)
    assert not given_file.closed  # a file we were given stays open for its owner
    assert given_file.getvalue() == (tmp_path / f"a.{kind}").read_bytes()
    with open_capture(tmp_path / f"a.{kind}") as reader:
        assert PacketBatch.concat(list(reader)).to_list() == batch.to_list()


# -- files from other writers ---------------------------------------------------------------


def _be_block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack(">II", btype, 12 + len(body)) + body + struct.pack(">I", 12 + len(body))


def _be_option(code: int, value: bytes) -> bytes:
    return struct.pack(">HH", code, len(value)) + value + bytes(-len(value) % 4)


def big_endian_section(frames: list[bytes]) -> bytes:
    """A big-endian pcapng section: microsecond-power-of-two clock with an offset, an
    unknown block, one EPB, one SPB and one obsolete Packet Block."""
    shb = _be_block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _be_block(
        1,
        struct.pack(">HHI", 1, 0, 0)
        + _be_option(9, b"\x8a")  # 2^-10 s
        + _be_option(14, struct.pack(">q", 100))  # +100 s
        + _be_option(0, b""),
    )
    unknown = _be_block(0x0BADBEEF, b"ignore me")
    ts = 3 << 10  # 3 s
    epb = _be_block(
        6,
        struct.pack(">IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frames[0]), len(frames[0]))
        + frames[0],
    )
    spb = _be_block(3, struct.pack(">I", len(frames[1])) + frames[1])
    pb = _be_block(
        2, struct.pack(">HHIIII", 0, 0, 0, 1 << 10, len(frames[2]), len(frames[2])) + frames[2]
    )
    return shb + idb + unknown + epb + spb + pb


def test_pcapng_sections_of_both_byte_orders(tmp_path: Path) -> None:
    first = sample_batch(n=4, ports=2)
    out = io.BytesIO()
    write_pcapng(out, first)
    extra = [B.udp_frame("198.18.1.1", "198.18.1.2", 1, 2, bytes(k)) for k in (3, 4, 5)]
    path = tmp_path / "multi.pcapng"
    path.write_bytes(out.getvalue() + big_endian_section(extra))
    reader = PcapngReader(path)
    back = PacketBatch.concat(list(reader))
    assert back.to_list() == first.to_list() + extra
    # Interfaces are numbered over the whole file: the second section's is number 2.
    assert back.port.tolist() == [*first.port.tolist(), 2, 2, 2]
    assert back.timestamps_ns[4] == 103_000_000_000
    assert back.timestamps_ns[5] == 0  # a Simple Packet Block has no timestamp
    assert back.timestamps_ns[6] == 101_000_000_000
    assert len(reader.interfaces) == 3 and reader.interfaces[2].tsresol == 0x8A


@needs_wireshark
def test_reads_what_wireshark_tools_write(tmp_path: Path) -> None:
    batch = sample_batch(n=30)
    src = tmp_path / "ours.pcap"
    write_pcap(src, batch, nanosecond=False)
    variants = {
        "ng.pcapng": ["editcap", "-F", "pcapng", str(src)],
        "ns.pcap": ["editcap", "-F", "nsecpcap", str(src)],
        "cut.pcapng": ["editcap", "-F", "pcapng", "-s", "40", str(src)],
        "tshark.pcapng": ["tshark", "-r", str(src), "-w"],
    }
    for name, cmd in variants.items():
        subprocess.run([*cmd, str(tmp_path / name)], check=True, capture_output=True, timeout=60)
    expected_ts = (batch.timestamps_ns // 1000 * 1000).tolist()
    for name in ("ng.pcapng", "ns.pcap", "tshark.pcapng"):
        back = read_capture_all(tmp_path / name)
        assert back.to_list() == batch.to_list(), name
        assert back.timestamps_ns.tolist() == expected_ts, name
    cut = read_capture_all(tmp_path / "cut.pcapng")
    assert cut.to_list() == [p[:40] for p in batch.to_list()]
    assert cut.meta["wire_length"].tolist() == batch.lengths.tolist()


@needs_wireshark
@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_tshark_reads_what_we_write(tmp_path: Path, kind: str) -> None:
    batch = sample_batch(n=9, ports=3)
    batch.meta["wire_length"] = batch.lengths.astype(np.int64) + 100  # captured truncated
    path = tmp_path / f"ours.{kind}"
    (write_pcap if kind == "pcap" else write_pcapng)(path, batch)
    fields = [
        "frame.time_epoch",
        "frame.interface_id",
        "frame.len",
        "frame.cap_len",
        "ip.src",
        "udp.dstport",
        "gtp.teid",
    ]
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == len(batch)
    for i, (epoch, iface, wire, cap, ip_src, dport, teid) in enumerate(rows):
        ts = T0 + i * 1_000_001
        assert epoch == f"{ts // 10**9}.{ts % 10**9:09d}"
        assert iface in ((str(batch.port[i]),) if kind == "pcapng" else ("", "0"))
        assert (int(wire), int(cap)) == (batch.lengths[i] + 100, batch.lengths[i])
        assert ip_src.split(",")[0] == f"198.18.0.{i + 1}"
        if i % 3 == 2:
            assert int(teid, 16) == 0x1000 + i and dport.split(",")[0] == "2152"
        else:
            assert teid == "" and dport == str(41000 + i)


# -- malformed files ------------------------------------------------------------------------


def _pcap_bytes(n: int = 3, snaplen: int = 262144) -> bytes:
    out = io.BytesIO()
    write_pcap(out, sample_batch(n), snaplen=snaplen)
    return out.getvalue()


def _pcapng_bytes(n: int = 3) -> bytes:
    out = io.BytesIO()
    write_pcapng(out, sample_batch(n))
    return out.getvalue()


def _error(data: bytes) -> CaptureFormatError:
    with pytest.raises(CaptureFormatError) as info:
        list(read_capture(io.BytesIO(data)))
    return info.value


def test_pcap_errors_name_offset_and_problem() -> None:
    good = _pcap_bytes()
    first_len = struct.unpack_from("<I", good, 24 + 8)[0]
    second = 24 + 16 + first_len
    err = _error(b"")
    assert err.offset == 0 and "too short" in str(err)
    err = _error(b"GIF89a-not-a-capture-file-at-all")
    assert err.offset == 0 and "bad magic" in str(err)
    err = _error(good[:20])
    assert err.offset == 20 and "truncated pcap file header" in str(err)
    err = _error(good + b"\x01\x02\x03\x04\x05")
    assert err.offset == len(good) and "truncated record header (5 of 16 bytes)" in str(err)
    err = _error(good[: second + 16 + 3])
    assert err.offset == second + 16 and "truncated packet data" in str(err)
    assert f"record at offset {second}" in str(err)
    at = 24  # find the first record longer than 50 bytes
    while struct.unpack_from("<I", good, at + 8)[0] <= 50:
        at += 16 + struct.unpack_from("<I", good, at + 8)[0]
    small = bytearray(good)
    struct.pack_into("<I", small, 16, 50)  # snaplen 50
    err = _error(bytes(small))
    assert err.offset == at + 8 and "caplen" in str(err) and "snaplen 50" in str(err)
    bad_version = bytearray(good)
    struct.pack_into("<H", bad_version, 4, 3)
    assert _error(bytes(bad_version)).offset == 4


def test_pcapng_errors_name_offset_and_problem() -> None:
    good = _pcapng_bytes()
    shb_len = struct.unpack_from("<I", good, 4)[0]
    idb_at = shb_len
    idb_len = struct.unpack_from("<I", good, idb_at + 4)[0]
    epb_at = idb_at + idb_len
    epb_len = struct.unpack_from("<I", good, epb_at + 4)[0]

    err = _error(good[:epb_at] + b"\x06\x00\x00")
    assert err.offset == epb_at and "truncated block header" in str(err)
    err = _error(good[: epb_at + 20])
    assert err.offset == epb_at and "truncated block" in str(err)

    mismatch = bytearray(good)
    struct.pack_into("<I", mismatch, epb_at + epb_len - 4, epb_len + 4)
    err = _error(bytes(mismatch))
    assert err.offset == epb_at + epb_len - 4 and "block length mismatch" in str(err)

    odd = bytearray(good)
    struct.pack_into("<I", odd, epb_at + 4, 30)
    err = _error(bytes(odd))
    assert err.offset == epb_at + 4 and "bad block length 30" in str(err)

    undeclared = bytearray(good)
    struct.pack_into("<I", undeclared, epb_at + 8, 5)
    err = _error(bytes(undeclared))
    assert err.offset == epb_at + 8 and "undeclared interface 5" in str(err)

    too_long = bytearray(good)
    struct.pack_into("<I", too_long, epb_at + 20, epb_len)
    err = _error(bytes(too_long))
    assert err.offset == epb_at + 20 and "exceeds its block" in str(err)

    bom = bytearray(good)
    bom[8:12] = b"\x00\x11\x22\x33"
    err = _error(bytes(bom))
    assert err.offset == 8 and "byte-order magic" in str(err)

    version = bytearray(good)
    struct.pack_into("<H", version, 12, 2)
    err = _error(bytes(version))
    assert err.offset == 12 and "unsupported pcapng version 2.0" in str(err)

    overrun = bytearray(good)
    struct.pack_into("<H", overrun, idb_at + 16 + 2, 200)  # first IDB option's length
    err = _error(bytes(overrun))
    assert err.offset == idb_at + 16 and "overruns" in str(err)

    with pytest.raises(CaptureFormatError, match="not a pcapng file") as info:
        PcapngReader(io.BytesIO(good[4:]))
    assert info.value.offset == 0


def test_errors_come_after_the_good_batches() -> None:
    good = _pcap_bytes(n=10)
    batches = read_capture(io.BytesIO(good + b"\x00" * 3), batch_size=4)
    assert len(next(batches)) == 4
    assert len(next(batches)) == 4
    with pytest.raises(CaptureFormatError, match="truncated record header"):
        next(batches)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["pcap", "pcapng"]), st.data())
def test_corrupted_files_raise_only_capture_errors(kind: str, data: st.DataObject) -> None:
    raw = bytearray(_pcap_bytes(4) if kind == "pcap" else _pcapng_bytes(4))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        for batch in read_capture(io.BytesIO(bytes(raw[:cut])), batch_size=2):
            assert len(batch) <= 2
    except CaptureFormatError as err:
        assert 0 <= err.offset <= cut
