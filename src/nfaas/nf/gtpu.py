"""GTP-U tunnelling of whole batches: decapsulate inner IP packets, encapsulate into G-PDUs.

`build.gtpu_frame` makes one tunnelled frame at a time (tests, probes); an NF that tunnels
traffic (the TOF) needs it for every packet of a batch. `encapsulate` prefixes each IP packet
with its own layer-2 header, outer IPv4, UDP 2152 and a GTP-U header (TS 29.281) — optionally
with a PDU Session Container (TS 38.415) carrying a QFI — all written with numpy into one
prefix array, so lengths and the IPv4 header checksum are per-packet but no Python loop runs
per packet. `decapsulate` does the reverse: each packet becomes an Ethernet header plus the
inner IP packet that `parse_inner` found.

The outer UDP checksum is 0 (allowed over IPv4, RFC 768, and what GTP-U endpoints commonly
send); outer IPv6 is not built here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nfaas.nf.batch import PacketBatch
from nfaas.nf.checksum import finish_array
from nfaas.nf.headers import ETH_IPV4, ETH_IPV6, GTP_EXT_PDU_SESSION, GTPU_PORT, Headers

__all__ = [
    "GTPU_OVERHEAD",
    "MAX_INNER_LENGTH",
    "PDU_SESSION_OVERHEAD",
    "decapsulate",
    "encapsulate",
]

GTP_G_PDU = 0xFF
PROTO_UDP = 17
# Outer IPv4 (no options) + UDP + the mandatory GTP-U header.
GTPU_OVERHEAD = 20 + 8 + 8
# The optional GTP-U fields (sequence, N-PDU, next type) + a 4-octet PDU Session Container.
PDU_SESSION_OVERHEAD = 4 + 4
# Largest inner packet whose tunnelled form still fits an IPv4 total length.
MAX_INNER_LENGTH = 0xFFFF - GTPU_OVERHEAD - PDU_SESSION_OVERHEAD

U8 = NDArray[np.uint8]


def _column(values: ArrayLike, n: int, dtype: type[np.integer[Any]], what: str) -> NDArray[Any]:
    """One value per packet from a scalar or an (n,) array."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        return np.full(n, arr, dtype)
    if arr.shape != (n,):
        raise ValueError(f"{what}: expected a scalar or shape ({n},), got {arr.shape}")
    return arr.astype(dtype, copy=False)


def _be(values: NDArray[Any], width: int) -> U8:
    """(m, width) big-endian bytes of unsigned integers."""
    return values.astype(f">u{width}").view(np.uint8).reshape(-1, width)


def _layer2(
    l2: ArrayLike | bytes, l2_length: ArrayLike | None, n: int
) -> tuple[U8, NDArray[np.int64]]:
    if isinstance(l2, bytes | bytearray):
        l2 = np.frombuffer(bytes(l2), np.uint8)
    rows = np.asarray(l2, dtype=np.uint8)
    if rows.ndim == 1:
        rows = np.broadcast_to(rows, (n, rows.shape[0]))
    if rows.ndim != 2 or rows.shape[0] != n:
        raise ValueError(f"l2: expected bytes or an ({n}, k) uint8 array, got {rows.shape}")
    lengths = (
        np.full(n, rows.shape[1], np.int64)
        if l2_length is None
        else _column(l2_length, n, np.int64, "l2_length")
    )
    if n and (int(lengths.min()) < 14 or int(lengths.max()) > rows.shape[1]):
        raise ValueError(
            f"l2_length must lie within 14..{rows.shape[1]} (an Ethernet header and its tags)"
        )
    return rows, lengths


def _headers(
    l2: U8,
    l2_len: int,
    pdu: bool,
    inner_len: NDArray[np.int64],
    fields: dict[str, NDArray[np.uint64]],
    ttl: int,
    uplink: bool,
) -> U8:
    """The (m, k) outer headers of packets sharing one layout (layer-2 length, PDU
    Session Container or not); every field is written with column slices."""
    m = inner_len.shape[0]
    gtp_len = 8 + (PDU_SESSION_OVERHEAD if pdu else 0)
    ip, udp, gtp = l2_len, l2_len + 20, l2_len + 28
    out = np.zeros((m, gtp + gtp_len), np.uint8)
    out[:, : l2_len - 2] = l2[:, : l2_len - 2]
    out[:, l2_len - 2 : l2_len] = _be(np.array([ETH_IPV4]), 2)
    total = (28 + gtp_len + inner_len).astype(np.uint64)
    tos, ident, src, dst = fields["tos"], fields["ident"], fields["src"], fields["dst"]
    ttl_proto = np.uint64(((ttl & 0xFF) << 8) | PROTO_UDP)
    words = (
        (np.uint64(0x4500) | tos)
        + total
        + ident
        + ttl_proto
        + (src >> np.uint64(16))
        + (src & np.uint64(0xFFFF))
        + (dst >> np.uint64(16))
        + (dst & np.uint64(0xFFFF))
    )
    out[:, ip] = 0x45
    out[:, ip + 1] = tos.astype(np.uint8)
    out[:, ip + 2 : ip + 4] = _be(total, 2)
    out[:, ip + 4 : ip + 6] = _be(ident, 2)
    out[:, ip + 8 : ip + 10] = _be(np.array([ttl_proto]), 2)
    out[:, ip + 10 : ip + 12] = _be(finish_array(words), 2)
    out[:, ip + 12 : ip + 16] = _be(src, 4)
    out[:, ip + 16 : ip + 20] = _be(dst, 4)
    # UDP (checksum 0: none, over IPv4), then GTP-U.
    out[:, udp : udp + 4] = _be(np.array([GTPU_PORT, GTPU_PORT]), 2).reshape(-1)
    out[:, udp + 4 : udp + 6] = _be(8 + gtp_len + inner_len, 2)
    out[:, gtp] = 0x34 if pdu else 0x30
    out[:, gtp + 1] = GTP_G_PDU
    out[:, gtp + 2 : gtp + 4] = _be(gtp_len - 8 + inner_len, 2)
    out[:, gtp + 4 : gtp + 8] = _be(fields["teid"], 4)
    if pdu:
        # seq 0, N-PDU 0, next type 0x85; then length 1, PDU type, QFI, no next extension.
        out[:, gtp + 11] = GTP_EXT_PDU_SESSION
        out[:, gtp + 12] = 1
        out[:, gtp + 13] = 0x10 if uplink else 0x00
        out[:, gtp + 14] = (fields["qfi"] & np.uint64(0x3F)).astype(np.uint8)
    return out


def encapsulate(
    packets: PacketBatch,
    *,
    teid: ArrayLike,
    src: ArrayLike,
    dst: ArrayLike,
    l2: ArrayLike | bytes,
    l2_length: ArrayLike | None = None,
    tos: ArrayLike = 0,
    ttl: int = 64,
    ident: ArrayLike = 0,
    qfi: ArrayLike | None = None,
    uplink: bool = False,
    start: ArrayLike = 0,
    end: ArrayLike | None = None,
) -> PacketBatch:
    """Tunnel each IP packet of `packets` in Ethernet / IPv4 / UDP / GTP-U.

    The IP packet is bytes `start:end` of each packet (default: all of it, no layer 2).
    Per packet (scalar or one value per packet): `teid`, outer IPv4 `src` and `dst`
    (uint32), `tos`, IPv4 `ident`; `l2` is the layer-2 header, one row per packet (or one
    for all), of which the first `l2_length` bytes are used — Ethernet with up to two VLAN
    tags; its last two bytes (the ethertype) are set to IPv4. `qfi` (one per packet, -1
    for none) adds a PDU Session Container with that QoS flow id, of the uplink or
    downlink PDU type. Timestamps, ports and meta columns follow the packets.
    """
    n = len(packets)
    starts = _column(start, n, np.int64, "start")
    ends = packets.lengths.astype(np.int64) if end is None else _column(end, n, np.int64, "end")
    inner_len = np.minimum(ends, packets.lengths) - starts
    if n and (int(starts.min()) < 0 or int(inner_len.min()) < 0):
        bad = int(np.argmax((starts < 0) | (inner_len < 0)))
        raise ValueError(f"packet {bad}: start {int(starts[bad])} / end lie outside the packet")
    if n and int(inner_len.max()) > MAX_INNER_LENGTH:
        big = int(np.argmax(inner_len))
        raise ValueError(
            f"packet {big} is {int(inner_len[big])} bytes; at most {MAX_INNER_LENGTH} fit in a "
            "tunnelled IPv4 packet"
        )
    rows, l2_len = _layer2(l2, l2_length, n)
    qfis = np.full(n, -1, np.int64) if qfi is None else _column(qfi, n, np.int64, "qfi")
    fields = {
        "teid": _column(teid, n, np.uint64, "teid"),
        "src": _column(src, n, np.uint64, "src"),
        "dst": _column(dst, n, np.uint64, "dst"),
        "tos": _column(tos, n, np.uint64, "tos") & np.uint64(0xFF),
        "ident": _column(ident, n, np.uint64, "ident") & np.uint64(0xFFFF),
        "qfi": np.maximum(qfis, 0).astype(np.uint64),
    }
    # Packets sharing a layout get their headers as one (m, k) array; usually there is one.
    layout = l2_len * 2 + (qfis >= 0)
    kinds = np.unique(layout)
    if kinds.size <= 1:
        k = int(kinds[0]) if n else 28
        pre = _headers(rows, k // 2, bool(k % 2), inner_len, fields, ttl, uplink)
        return packets.rebuild(start=starts, end=starts + inner_len, prefix=pre)
    parts, where = [], np.empty(n, np.int64)
    size = 0
    for k in kinds.tolist():
        sel = np.flatnonzero(layout == k)
        part = _headers(
            rows[sel],
            k // 2,
            bool(k % 2),
            inner_len[sel],
            {name: col[sel] for name, col in fields.items()},
            ttl,
            uplink,
        )
        where[sel] = size + np.arange(sel.size, dtype=np.int64) * part.shape[1]
        size += part.size
        parts.append(part.reshape(-1))
    head_len = l2_len + 28 + 8 + PDU_SESSION_OVERHEAD * (qfis >= 0)
    prefixes = PacketBatch(np.concatenate(parts), where, head_len)
    return packets.rebuild(start=starts, end=starts + inner_len, prefix=prefixes)


def decapsulate(
    batch: PacketBatch,
    inner: Headers,
    *,
    dst_mac: bytes,
    src_mac: bytes,
    rows: NDArray[np.intp] | None = None,
) -> PacketBatch:
    """Each packet's inner IP packet (as `parse_inner` found it) behind a new Ethernet header.

    With `rows`, only those packets of `batch` (and rows of `inner`), in that order. The
    inner packet runs from its `l3_offset` for its IP total length (padding after it inside
    the tunnel is dropped); the ethertype follows the inner IP version. Packets whose inner
    packet is not valid must be left out by the caller.
    """
    if len(inner) != len(batch):
        raise ValueError(f"{len(inner)} inner headers for {len(batch)} packets")
    if len(dst_mac) != 6 or len(src_mac) != 6:
        raise ValueError("dst_mac and src_mac are 6 bytes each")
    pick: NDArray[np.intp] | slice = slice(None) if rows is None else rows
    if rows is not None:
        batch = batch.select(rows, copy=False)
    n = len(batch)
    start = inner.l3_offset[pick].astype(np.int64)
    end = start + inner.ip_total_length[pick].astype(np.int64)
    eth = np.empty((n, 14), np.uint8)
    eth[:, :6] = np.frombuffer(dst_mac, np.uint8)
    eth[:, 6:12] = np.frombuffer(src_mac, np.uint8)
    ethertype = np.where(inner.ip_version[pick] == 6, ETH_IPV6, ETH_IPV4)
    eth[:, 12:14] = _be(ethertype, 2)
    return batch.rebuild(start=start, end=end, prefix=eth)
