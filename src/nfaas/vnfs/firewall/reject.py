"""What a `reject` rule sends back: ICMP / ICMPv6 "port unreachable", as nftables does.

A plain `reject` in an nftables inet table answers every rejected packet, TCP included, with
an ICMP destination-unreachable / port-unreachable (IPv4 type 3 code 3) or ICMPv6
destination-unreachable / port-unreachable (type 1 code 4) to its sender. The answer quotes
the start of the rejected packet: up to 548 bytes for IPv4 (the whole error fits 576 bytes,
RFC 1812 §4.3.2.3, as Linux does) and up to 1232 for IPv6 (the error fits the 1280-byte
minimum MTU, RFC 4443 §2.4).

No error is sent (RFC 1122 §3.2.2, RFC 4443 §2.4 (e)) about an ICMP error, a non-first
fragment, or a packet to a multicast or broadcast address or from a multicast source. The
Ethernet header is the rejected packet's with the two addresses swapped (VLAN tags kept), so
the answer leaves through the port the packet came in on. The build is vectorised: one
template row per answer, one ragged copy of the quoted bytes, checksums for the batch.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from nfaas.nf.batch import PacketBatch
from nfaas.nf.build import fix_ipv4_checksums, fix_l4_checksums
from nfaas.nf.headers import PROTO_ICMP, PROTO_ICMPV6, Headers, parse

__all__ = ["QUOTE_V4", "QUOTE_V6", "can_answer", "port_unreachable"]

QUOTE_V4 = 548  # 576 - 20 (IP) - 8 (ICMP)
QUOTE_V6 = 1232  # 1280 - 40 (IPv6) - 8 (ICMPv6)
_ICMPV4_ERRORS = np.array([3, 4, 5, 11, 12], np.uint8)
_TTL = 64


def can_answer(h: Headers, rows: NDArray[np.intp]) -> NDArray[np.bool_]:
    """Per row: may an ICMP error be sent about this packet?"""
    v6 = h.ip_version[rows] == 6
    proto = h.protocol[rows]
    icmp_type = h.icmp_type[rows]
    has_l4 = h.l4_offset[rows] >= 0
    error = np.where(
        v6,
        has_l4 & (proto == PROTO_ICMPV6) & (icmp_type < 128),
        has_l4 & (proto == PROTO_ICMP) & np.isin(icmp_type, _ICMPV4_ERRORS),
    )
    later_fragment = h.frag_offset[rows] != 0
    dst4, src4 = h.ipv4_dst[rows], h.ipv4_src[rows]
    group4 = ((dst4 >> 28) == 0xE) | (dst4 == 0xFFFFFFFF) | ((src4 >> 28) == 0xE)
    group6 = ((h.ipv6_dst_hi[rows] >> np.uint64(56)) == 0xFF) | (
        (h.ipv6_src_hi[rows] >> np.uint64(56)) == 0xFF
    )
    group = np.where(v6, group6, group4)
    return (h.ip_version[rows] != 0) & ~error & ~later_fragment & ~group


def _put(
    frames: NDArray[np.uint8], at: NDArray[np.int64], value: NDArray[np.uint64], width: int
) -> None:
    """Write big-endian `width`-byte `value`s into each row of `frames` at column `at`."""
    rows = np.arange(frames.shape[0])
    for k in range(width):
        shift = np.uint64(8 * (width - 1 - k))
        frames[rows, at + k] = ((value >> shift) & np.uint64(0xFF)).astype(np.uint8)


def port_unreachable(
    batch: PacketBatch, h: Headers, rows: NDArray[np.intp]
) -> tuple[PacketBatch, Headers]:
    """The answers to the packets `rows` (which `can_answer`), parsed, checksums set."""
    n = rows.shape[0]
    if n == 0:
        empty = PacketBatch.empty()
        return empty, parse(empty)
    l3 = h.l3_offset[rows].astype(np.int64)
    v6 = h.ip_version[rows] == 6
    ip_len = np.where(v6, 40, 20).astype(np.int64)
    total = h.ip_total_length[rows].astype(np.int64)
    quoted = np.minimum(total, np.where(v6, QUOTE_V6, QUOTE_V4))
    quoted = np.minimum(quoted, batch.lengths[rows].astype(np.int64) - l3)
    head = l3 + ip_len + 8  # Ethernet (+ tags) + IP + ICMP header: the template part
    frames = np.zeros((n, int(head.max())), np.uint8)
    # Ethernet: the rejected packet's header, addresses swapped.
    for size in np.unique(l3).tolist():  # one group per VLAN tag count
        pick = np.flatnonzero(l3 == size)
        frames[pick, :size] = batch.read_bytes(0, size, rows[pick])
    frames[:, 0:6], frames[:, 6:12] = frames[:, 6:12].copy(), frames[:, 0:6].copy()
    _ip_headers(frames, h, rows, l3, v6, 8 + quoted)
    icmp = l3 + ip_len
    rr = np.arange(n)
    frames[rr, icmp] = np.where(v6, 1, 3)  # destination unreachable
    frames[rr, icmp + 1] = np.where(v6, 4, 3)  # port unreachable
    prefix = PacketBatch.from_array(frames, head)
    source = batch.select(rows, copy=False)
    out = source.rebuild(start=l3, end=l3 + quoted, prefix=prefix)
    out.meta = {}
    answers = parse(out)
    fix_ipv4_checksums(out, answers)
    fix_l4_checksums(out, answers)
    return out, answers


def _ip_headers(
    frames: NDArray[np.uint8],
    h: Headers,
    rows: NDArray[np.intp],
    l3: NDArray[np.int64],
    v6: NDArray[np.bool_],
    payload: NDArray[np.int64],
) -> None:
    """IPv4 / IPv6 headers from the packet's destination back to its source; `payload`
    is the ICMP message's length."""
    r4 = np.flatnonzero(~v6)
    if r4.size:
        at = l3[r4]
        f = frames[r4]
        rows4 = np.arange(r4.size)
        f[rows4, at] = 0x45
        f[rows4, at + 1] = 0xC0  # precedence "internetwork control", as Linux sends errors
        _put(f, at + 2, (payload[r4] + 20).astype(np.uint64), 2)
        f[rows4, at + 8] = _TTL
        f[rows4, at + 9] = PROTO_ICMP
        _put(f, at + 12, h.ipv4_dst[rows[r4]].astype(np.uint64), 4)
        _put(f, at + 16, h.ipv4_src[rows[r4]].astype(np.uint64), 4)
        frames[r4] = f
    r6 = np.flatnonzero(v6)
    if r6.size:
        at = l3[r6]
        f = frames[r6]
        rows6 = np.arange(r6.size)
        f[rows6, at] = 0x60
        _put(f, at + 4, payload[r6].astype(np.uint64), 2)
        f[rows6, at + 6] = PROTO_ICMPV6
        f[rows6, at + 7] = _TTL
        src = rows[r6]
        _put(f, at + 8, h.ipv6_dst_hi[src], 8)
        _put(f, at + 16, h.ipv6_dst_lo[src], 8)
        _put(f, at + 24, h.ipv6_src_hi[src], 8)
        _put(f, at + 32, h.ipv6_src_lo[src], 8)
        frames[r6] = f
