"""PacketBatch: construction, selection, concatenation, field access and rebuilding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nfaas.nf.batch as batch_module
from nfaas.nf.batch import PacketBatch, packed_offsets, ragged_copy

packets = st.lists(st.binary(min_size=0, max_size=80), min_size=0, max_size=40)


@given(packets)
def test_from_bytes_round_trips(pkts: list[bytes]) -> None:
    b = PacketBatch.from_bytes(pkts, timestamps_ns=np.arange(len(pkts)), port=3)
    assert len(b) == len(pkts)
    assert b.to_list() == pkts
    assert [b.packet(i) for i in range(len(b))] == pkts
    assert b.total_bytes == sum(map(len, pkts))
    assert b.is_compact()
    assert b.timestamps_ns.tolist() == list(range(len(pkts)))
    assert set(b.port.tolist()) <= {3}


@given(st.lists(st.integers(0, 1 << 40), max_size=20))
def test_packed_offsets_put_packets_back_to_back(lengths: list[int]) -> None:
    offsets = packed_offsets(np.array(lengths, np.int64))
    assert offsets.dtype == np.int64
    assert offsets.tolist() == [sum(lengths[:i]) for i in range(len(lengths))]


@given(packets, st.data())
def test_select_by_mask_index_and_slice(pkts: list[bytes], data: st.DataObject) -> None:
    b = PacketBatch.from_bytes(pkts, timestamps_ns=np.arange(len(pkts)) * 10)
    b.meta["flow"] = np.arange(len(pkts)) + 100
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(pkts), max_size=len(pkts))))
    picked = [p for p, m in zip(pkts, mask, strict=True) if m]
    for copy in (True, False):
        s = b.select(mask.astype(bool), copy=copy)
        assert s.to_list() == picked
        assert s.meta["flow"].tolist() == [i + 100 for i in range(len(pkts)) if mask[i]]
        assert s.timestamps_ns.tolist() == [10 * i for i in range(len(pkts)) if mask[i]]
    if pkts:
        order = np.array(data.draw(st.permutations(range(len(pkts)))))
        assert b.select(order).to_list() == [pkts[i] for i in order]
    assert b[1:3].to_list() == pkts[1:3]


def test_select_copy_is_independent_and_view_is_shared() -> None:
    b = PacketBatch.from_bytes([b"aaaa", b"bbbb"])
    copied = b.select(np.array([True, False]))
    shared = b.select(np.array([True, False]), copy=False)
    b.write_uint(0, 0x7A, 1)
    assert copied.packet(0) == b"aaaa"
    assert shared.packet(0) == b"zaaa"


def test_concat_keeps_order_metadata_and_common_meta_columns() -> None:
    a = PacketBatch.from_bytes([b"1", b"22"], timestamps_ns=[1, 2], port=1)
    b = PacketBatch.from_bytes([b"333"], timestamps_ns=[3], port=2)
    a.meta["x"] = np.array([5, 6])
    b.meta["x"] = np.array([7])
    a.meta["only_a"] = np.array([0, 0])
    c = PacketBatch.concat([a, PacketBatch.empty(), b.select(np.array([0]), copy=False)])
    assert c.to_list() == [b"1", b"22", b"333"]
    assert c.timestamps_ns.tolist() == [1, 2, 3]
    assert c.port.tolist() == [1, 1, 2]
    assert c.meta["x"].tolist() == [5, 6, 7]
    assert "only_a" not in c.meta
    assert len(PacketBatch.concat([])) == 0


def test_split_shares_data() -> None:
    b = PacketBatch.from_bytes([bytes([i]) for i in range(10)])
    parts = b.split(4)
    assert [len(p) for p in parts] == [4, 4, 2]
    assert [x for p in parts for x in p.to_list()] == b.to_list()


def test_from_array_and_trimmed_lengths() -> None:
    frames = np.arange(12, dtype=np.uint8).reshape(3, 4)
    b = PacketBatch.from_array(frames, lengths=[4, 2, 0])
    assert b.to_list() == [bytes([0, 1, 2, 3]), bytes([4, 5]), b""]


def test_constructor_rejects_inconsistent_buffers() -> None:
    with pytest.raises(ValueError, match="outside the data buffer"):
        PacketBatch(np.zeros(4, np.uint8), [0, 2], [2, 3])
    with pytest.raises(ValueError, match="uint8"):
        PacketBatch(np.zeros(4, np.int16), [0], [2])  # type: ignore[arg-type]


def test_read_and_write_fields_at_per_packet_offsets() -> None:
    b = PacketBatch.from_bytes([bytes(8), bytes(10), bytes(12)])
    rel = np.array([0, 2, 4])
    b.write_uint(rel, np.array([0x0102, 0x0304, 0x0506]), 2)
    b.write_uint(rel + 2, 0xA0B0C0D0, 4)
    assert b.read_uint(rel, 2).tolist() == [0x0102, 0x0304, 0x0506]
    assert b.read_uint(rel + 2, 4).tolist() == [0xA0B0C0D0] * 3
    assert b.read_uint(rel, 1).tolist() == [1, 3, 5]
    assert b.packet(1)[2:8] == bytes([3, 4, 0xA0, 0xB0, 0xC0, 0xD0])
    # Only the packets picked by idx are touched.
    b.write_bytes(np.array([0]), np.array([[9, 9]], np.uint8), idx=np.array([2]))
    assert b.packet(2)[:2] == b"\x09\x09"
    assert b.packet(0)[:2] == b"\x01\x02"
    assert b.read_bytes(0, 2, idx=np.array([2])).tolist() == [[9, 9]]
    with pytest.raises(IndexError, match="outside packet 0"):
        b.write_uint(7, 1, 2)
    with pytest.raises(IndexError):
        b.read_uint(-1, 1)


@settings(max_examples=60)
@given(packets, st.data())
def test_rebuild_matches_reference(pkts: list[bytes], data: st.DataObject) -> None:
    b = PacketBatch.from_bytes(pkts, timestamps_ns=np.arange(len(pkts)))
    n = len(pkts)
    starts = [data.draw(st.integers(0, len(p))) for p in pkts]
    ends = [data.draw(st.integers(s, len(p))) for s, p in zip(starts, pkts, strict=True)]
    # Decapsulation: keep a slice of every packet.
    out = b.rebuild(np.array(starts, np.int64), np.array(ends, np.int64))
    assert out.to_list() == [p[s:e] for p, s, e in zip(pkts, starts, ends, strict=True)]
    assert out.timestamps_ns.tolist() == list(range(n))
    # Encapsulation with one header for all, a fixed-width header each, ragged headers.
    assert b.rebuild(prefix=b"HDR").to_list() == [b"HDR" + p for p in pkts]
    fixed = np.arange(n * 2, dtype=np.uint8).reshape(n, 2)
    assert b.rebuild(prefix=fixed).to_list() == [
        bytes(row) + p for row, p in zip(fixed.tolist(), pkts, strict=True)
    ]
    heads = [bytes([i]) * (i % 3) for i in range(n)]
    ragged = b.rebuild(starts, prefix=PacketBatch.from_bytes(heads))
    assert ragged.to_list() == [h + p[s:] for h, p, s in zip(heads, pkts, starts, strict=True)]


@settings(max_examples=40)
@given(st.lists(st.integers(0, 700), max_size=30), st.booleans(), st.data())
def test_ragged_copy_both_strategies(
    lengths: list[int], shuffle: bool, data: st.DataObject
) -> None:
    """Short segments go through the vectorised gather, long ones through slice copies."""
    src = np.frombuffer(bytes(range(256)) * 100, np.uint8)
    lens = np.array(lengths, np.int64)
    src_starts = np.array([data.draw(st.integers(0, src.size - k)) for k in lengths], np.int64)
    dst_starts = np.cumsum(lens) - lens
    if not shuffle:  # adjacent segments, merged into runs
        src_starts = dst_starts
    dst = np.zeros(int(lens.sum()), np.uint8)
    ragged_copy(dst, dst_starts, src, src_starts, lens)
    expected = b"".join(src[s : s + k].tobytes() for s, k in zip(src_starts, lens, strict=True))
    assert dst.tobytes() == expected


def test_ragged_copy_crosses_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_module, "_COPY_CHUNK_BYTES", 64)
    pkts = [bytes([i % 251]) * (i % 50) for i in range(200)]
    b = PacketBatch.from_bytes(pkts)
    keep = np.arange(200) % 3 != 0
    assert b.select(keep).to_list() == [p for i, p in enumerate(pkts) if i % 3]
