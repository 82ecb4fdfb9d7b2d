"""Building packets (for tests, benchmarks and NFs) and rewriting fields of parsed batches.

Scalar builders return `bytes` with correct lengths and checksums: `ethernet`, `ipv4`,
`ipv6` (with extension headers), `udp`, `tcp`, `icmp_echo`, `icmpv6_echo`, `gtpu` (with
sequence number and extension headers such as the PDU Session Container), and whole-frame
shortcuts (`udp_frame`, `tcp_frame`, `icmp_echo_frame`, `gtpu_frame`). IPv4 versus IPv6 is
chosen by the type of the addresses.

Batch rewriters work in place on a `PacketBatch` and its parsed `Headers`: set IPv4
addresses and L4 ports with incremental checksum updates (RFC 1624, as a NAT does), decrement
TTLs, and recompute IPv4 header and TCP/UDP/ICMP checksums for whole batches.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nfaas.nf.batch import PacketBatch
from nfaas.nf.checksum import (
    as_words,
    finish_array,
    incremental_update,
    internet_checksum,
    pseudo_header_sum,
    segment_sums,
)
from nfaas.nf.headers import (
    ETH_IPV4,
    ETH_IPV6,
    GTP_EXT_PDU_SESSION,
    GTPU_PORT,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Headers,
)

__all__ = [
    "TCP_ACK",
    "TCP_FIN",
    "TCP_PSH",
    "TCP_RST",
    "TCP_SYN",
    "TCP_URG",
    "Address",
    "decrement_ttl",
    "ethernet",
    "fix_ipv4_checksums",
    "fix_l4_checksums",
    "gtpu",
    "gtpu_frame",
    "icmp_echo",
    "icmp_echo_frame",
    "icmpv6_echo",
    "ipv4",
    "ipv4_checksums_ok",
    "ipv6",
    "ipv6_fragment",
    "ipv6_options",
    "l4_checksums_ok",
    "mac_bytes",
    "pdu_session_container",
    "set_icmp_id",
    "set_ipv4_dst",
    "set_ipv4_src",
    "set_l4_dport",
    "set_l4_sport",
    "tcp",
    "tcp_frame",
    "udp",
    "udp_frame",
]

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

Address = str | int | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
Mac = str | int | bytes

DEFAULT_SRC_MAC = "02:00:00:00:00:01"
DEFAULT_DST_MAC = "02:00:00:00:00:02"


# -- scalar helpers -------------------------------------------------------------------------


def _ip(addr: Address) -> IPAddr:
    """An address object; ints are IPv4 below 2**32, bytes by length."""
    if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return addr
    if isinstance(addr, bytes) and len(addr) not in (4, 16):
        raise ValueError(f"an address is 4 or 16 bytes, got {len(addr)}")
    return ipaddress.ip_address(addr)


def mac_bytes(mac: Mac) -> bytes:
    """Six bytes from "aa:bb:cc:dd:ee:ff", an int or bytes."""
    if isinstance(mac, bytes):
        if len(mac) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}")
        return mac
    if isinstance(mac, int):
        return mac.to_bytes(6, "big")
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def _pair(src: Address, dst: Address) -> tuple[IPAddr, IPAddr]:
    s, d = _ip(src), _ip(dst)
    if s.version != d.version:
        raise ValueError(f"source {s} and destination {d} are of different IP versions")
    return s, d


def _l4_checksum(src: Address, dst: Address, proto: int, segment: bytes) -> int:
    s, d = _pair(src, dst)
    return internet_checksum(segment, pseudo_header_sum(s.packed, d.packed, proto, len(segment)))


# -- layer builders -------------------------------------------------------------------------


def ethernet(
    payload: bytes = b"",
    *,
    ethertype: int = ETH_IPV4,
    dst: Mac = DEFAULT_DST_MAC,
    src: Mac = DEFAULT_SRC_MAC,
    vlans: Sequence[int] = (),
    vlan_pcp: int = 0,
    pad: bool = False,
) -> bytes:
    """Ethernet II frame; `vlans` are VLAN ids, outermost first (QinQ uses 0x88A8 outside).

    With `pad`, the frame is padded to the 60-byte minimum (without FCS).
    """
    head = mac_bytes(dst) + mac_bytes(src)
    for depth, vid in enumerate(vlans):
        tpid = 0x88A8 if depth == 0 and len(vlans) > 1 else 0x8100
        head += struct.pack("!HH", tpid, (vlan_pcp << 13) | (vid & 0x0FFF))
    frame = head + struct.pack("!H", ethertype) + payload
    if pad and len(frame) < 60:
        frame += bytes(60 - len(frame))
    return frame


def ipv4(
    src: Address,
    dst: Address,
    proto: int,
    payload: bytes = b"",
    *,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    dont_fragment: bool = False,
    more_fragments: bool = False,
    frag_offset: int = 0,
    options: bytes = b"",
    total_length: int | None = None,
) -> bytes:
    """IPv4 packet with a correct header checksum (`frag_offset` in 8-byte units).

    `options` are zero-padded to a multiple of 4 bytes; `total_length` overrides the
    computed one (for malformed-packet tests).
    """
    options = options + bytes(-len(options) % 4)
    ihl = 5 + len(options) // 4
    if ihl > 15:
        raise ValueError("IPv4 options longer than 40 bytes")
    length = 4 * ihl + len(payload) if total_length is None else total_length
    flags = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        tos,
        length,
        ident,
        flags | (frag_offset & 0x1FFF),
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(_ip(src)).packed,
        ipaddress.IPv4Address(_ip(dst)).packed,
    )
    header += options
    csum = internet_checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


def ipv6_options(kind: int, data: bytes = b"") -> tuple[int, bytes]:
    """A hop-by-hop (0), routing (43) or destination-options (60) header body for `ipv6`.

    The body (after the next-header and length octets) is padded with PadN to a multiple
    of 8 bytes overall.
    """
    pad = -(len(data) + 2) % 8
    if pad == 1:
        data += b"\x00"  # Pad1
    elif pad:
        data += bytes([1, pad - 2]) + bytes(pad - 2)  # PadN
    return kind, data


def ipv6_fragment(offset: int, more: bool, ident: int) -> tuple[int, bytes]:
    """A fragment extension header body for `ipv6` (`offset` in 8-byte units)."""
    return 44, struct.pack("!HI", ((offset & 0x1FFF) << 3) | int(more), ident)


def ipv6(
    src: Address,
    dst: Address,
    next_header: int,
    payload: bytes = b"",
    *,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
    extensions: Sequence[tuple[int, bytes]] = (),
    payload_length: int | None = None,
) -> bytes:
    """IPv6 packet; `extensions` are (type, body) pairs, e.g. from `ipv6_options`.

    Each body is what follows the header's first two octets (next header, length); the
    length octet is computed (8-octet units, or 4-octet units for AH = type 51).
    """
    chain = b""
    kinds = [kind for kind, _ in extensions] + [next_header]
    for (kind, body), nxt in zip(extensions, kinds[1:], strict=True):
        size = len(body) + 2
        if kind == 44:
            if size != 8:
                raise ValueError("a fragment header body is 6 bytes")
            second = 0
        elif kind == 51:
            if size % 4:
                raise ValueError("an AH header is a multiple of 4 bytes")
            second = size // 4 - 2
        else:
            if size % 8:
                raise ValueError(f"extension header {kind} must be a multiple of 8 bytes")
            second = size // 8 - 1
        chain += bytes([nxt, second]) + body
    body_all = chain + payload
    plen = len(body_all) if payload_length is None else payload_length
    first = (6 << 28) | ((traffic_class & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return (
        struct.pack(
            "!IHBB16s16s",
            first,
            plen,
            kinds[0],
            hop_limit,
            ipaddress.IPv6Address(_ip(src)).packed,
            ipaddress.IPv6Address(_ip(dst)).packed,
        )
        + body_all
    )


def udp(
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    src: Address,
    dst: Address,
    checksum: bool = True,
) -> bytes:
    """UDP datagram; the checksum uses the pseudo header of `src`/`dst` (IPv4 may skip it)."""
    head = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    if not checksum and _ip(src).version == 4:
        return head + payload
    csum = _l4_checksum(src, dst, PROTO_UDP, head + payload) or 0xFFFF
    return head[:6] + struct.pack("!H", csum) + payload


def tcp(
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    src: Address,
    dst: Address,
    seq: int = 0,
    ack: int = 0,
    flags: int = TCP_ACK,
    window: int = 65535,
    options: bytes = b"",
    urgent: int = 0,
) -> bytes:
    """TCP segment with checksum; `flags` is the 9-bit flag field (TCP_SYN | TCP_ACK ...)."""
    options = options + bytes(-len(options) % 4)
    offset = 5 + len(options) // 4
    head = struct.pack(
        "!HHIIHHHH",
        sport,
        dport,
        seq,
        ack,
        (offset << 12) | (flags & 0x01FF),
        window,
        0,
        urgent,
    )
    segment = head + options + payload
    csum = _l4_checksum(src, dst, PROTO_TCP, segment)
    return segment[:16] + struct.pack("!H", csum) + segment[18:]


def icmp_echo(ident: int, seq: int, payload: bytes = b"", *, reply: bool = False) -> bytes:
    """ICMPv4 echo request (or reply) with checksum."""
    head = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq)
    csum = internet_checksum(head + payload)
    return head[:2] + struct.pack("!H", csum) + head[4:] + payload


def icmpv6_echo(
    ident: int,
    seq: int,
    payload: bytes = b"",
    *,
    src: Address,
    dst: Address,
    reply: bool = False,
) -> bytes:
    """ICMPv6 echo request (or reply) with checksum over the IPv6 pseudo header."""
    head = struct.pack("!BBHHH", 129 if reply else 128, 0, 0, ident, seq)
    csum = _l4_checksum(src, dst, PROTO_ICMPV6, head + payload)
    return head[:2] + struct.pack("!H", csum) + head[4:] + payload


def pdu_session_container(qfi: int, uplink: bool = False, ppp: int = 0) -> tuple[int, bytes]:
    """GTP-U PDU Session Container extension (type 0x85, TS 38.415) for `gtpu`.

    Returns (type, content) where content is what sits between the length octet and the
    next-extension-type octet.
    """
    if uplink:
        return GTP_EXT_PDU_SESSION, bytes([0x10, qfi & 0x3F])
    return GTP_EXT_PDU_SESSION, bytes([0x00, ((ppp & 1) << 7) | (qfi & 0x3F)])


def gtpu(
    teid: int,
    payload: bytes = b"",
    *,
    msg_type: int = 0xFF,
    seq: int | None = None,
    npdu: int | None = None,
    extensions: Sequence[tuple[int, bytes]] = (),
    length: int | None = None,
) -> bytes:
    """GTP-U (TS 29.281) header + payload; a G-PDU (0xFF) carries an IP packet.

    Each extension is (type, content); content is padded so the header is a multiple of
    4 octets. The optional fields are present when any of seq, npdu, extensions is given.
    """
    flags = 0x30 | (0x04 if extensions else 0) | (0x02 if seq is not None else 0)
    flags |= 0x01 if npdu is not None else 0
    opt = b""
    if flags & 0x07:
        first_ext = extensions[0][0] if extensions else 0
        opt = struct.pack("!HBB", seq or 0, npdu or 0, first_ext)
        kinds = [kind for kind, _ in extensions] + [0]
        for (_, content), nxt in zip(extensions, kinds[1:], strict=True):
            content = content + bytes(-(len(content) + 2) % 4)
            opt += bytes([(len(content) + 2) // 4]) + content + bytes([nxt])
    body = opt + payload
    glen = len(body) if length is None else length
    return struct.pack("!BBHI", flags, msg_type, glen, teid) + body


# -- whole frames ---------------------------------------------------------------------------


def _ip_packet(src: Address, dst: Address, proto: int, segment: bytes, **ip: Any) -> bytes:
    s, d = _pair(src, dst)
    if s.version == 4:
        return ipv4(s, d, proto, segment, **ip)
    ip6 = {("hop_limit" if k == "ttl" else k): v for k, v in ip.items()}
    if "tos" in ip6:
        ip6["traffic_class"] = ip6.pop("tos")
    return ipv6(s, d, proto, segment, **ip6)


def _frame(packet: bytes, version: int, vlans: Sequence[int], eth: dict[str, Any]) -> bytes:
    return ethernet(packet, ethertype=ETH_IPV4 if version == 4 else ETH_IPV6, vlans=vlans, **eth)


def udp_frame(
    src: Address,
    dst: Address,
    sport: int = 1024,
    dport: int = 9,
    payload: bytes = b"",
    *,
    vlans: Sequence[int] = (),
    eth: dict[str, Any] | None = None,
    **ip: Any,
) -> bytes:
    """Ethernet / IPv4-or-IPv6 / UDP frame; `ip` keywords go to `ipv4` / `ipv6`."""
    seg = udp(sport, dport, payload, src=src, dst=dst)
    return _frame(_ip_packet(src, dst, PROTO_UDP, seg, **ip), _ip(src).version, vlans, eth or {})


def tcp_frame(
    src: Address,
    dst: Address,
    sport: int = 1024,
    dport: int = 80,
    payload: bytes = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    flags: int = TCP_ACK,
    vlans: Sequence[int] = (),
    eth: dict[str, Any] | None = None,
    **ip: Any,
) -> bytes:
    """Ethernet / IPv4-or-IPv6 / TCP frame."""
    seg = tcp(sport, dport, payload, src=src, dst=dst, seq=seq, ack=ack, flags=flags)
    return _frame(_ip_packet(src, dst, PROTO_TCP, seg, **ip), _ip(src).version, vlans, eth or {})


def icmp_echo_frame(
    src: Address,
    dst: Address,
    ident: int = 1,
    seq: int = 1,
    payload: bytes = b"",
    *,
    reply: bool = False,
    vlans: Sequence[int] = (),
    eth: dict[str, Any] | None = None,
    **ip: Any,
) -> bytes:
    """Ethernet / IPv4 / ICMP echo, or Ethernet / IPv6 / ICMPv6 echo, by address type."""
    version = _ip(src).version
    if version == 4:
        seg, proto = icmp_echo(ident, seq, payload, reply=reply), PROTO_ICMP
    else:
        seg = icmpv6_echo(ident, seq, payload, src=src, dst=dst, reply=reply)
        proto = PROTO_ICMPV6
    return _frame(_ip_packet(src, dst, proto, seg, **ip), version, vlans, eth or {})


def gtpu_frame(
    src: Address,
    dst: Address,
    teid: int,
    inner: bytes,
    *,
    seq: int | None = None,
    npdu: int | None = None,
    extensions: Sequence[tuple[int, bytes]] = (),
    sport: int = GTPU_PORT,
    dport: int = GTPU_PORT,
    vlans: Sequence[int] = (),
    eth: dict[str, Any] | None = None,
    **ip: Any,
) -> bytes:
    """Ethernet / outer IP / UDP 2152 / GTP-U G-PDU carrying the IP packet `inner`."""
    g = gtpu(teid, inner, seq=seq, npdu=npdu, extensions=extensions)
    return udp_frame(src, dst, sport, dport, g, vlans=vlans, eth=eth, **ip)


# -- batch rewriting ------------------------------------------------------------------------


def _rows(h: Headers, mask: ArrayLike | None, extra: NDArray[np.bool_]) -> NDArray[np.intp]:
    sel = h.valid & extra
    if mask is not None:
        sel &= np.asarray(mask, dtype=np.bool_)
    return np.flatnonzero(sel)


def _values(values: ArrayLike, rows: NDArray[np.intp], n: int) -> NDArray[Any]:
    """Per-row values: a scalar, or an array over the whole batch (n) indexed by `rows`."""
    v = np.asarray(values)
    if v.ndim == 0:
        return np.broadcast_to(v, rows.shape)
    if v.shape[0] != n:
        raise ValueError(f"expected one value per packet ({n}), got {v.shape[0]}")
    return v[rows]


def _update_checksum(
    batch: PacketBatch,
    rel: NDArray[np.int64],
    rows: NDArray[np.intp],
    old_words: NDArray[np.uint16],
    new_words: NDArray[np.uint16],
) -> None:
    """Incrementally update (RFC 1624) the checksum at per-packet offset `rel` of `rows`
    for 16-bit words changed from `old_words` to `new_words`."""
    csum = batch.read_uint(rel, 2, rows)
    batch.write_uint(rel, incremental_update(csum, old_words, new_words), 2, rows)


def _adjust_l4(
    batch: PacketBatch,
    h: Headers,
    rows: NDArray[np.intp],
    old_words: NDArray[np.uint16],
    new_words: NDArray[np.uint16],
) -> None:
    """Incrementally fix TCP/UDP checksums of `rows` for changed pseudo-header/L4 words."""
    proto = h.protocol[rows]
    has = (h.l4_offset[rows] >= 0) & ((proto == PROTO_TCP) | (proto == PROTO_UDP))
    r = rows[has]
    if r.size == 0:
        return
    rel = h.l4_offset[r].astype(np.int64) + np.where(h.protocol[r] == PROTO_TCP, 16, 6)
    old_sum = batch.read_uint(rel, 2, r)
    is_udp = h.protocol[r] == PROTO_UDP
    new_sum = incremental_update(old_sum, old_words[has], new_words[has])
    # UDP over IPv4 may carry no checksum (0): leave it so; a computed 0 is sent as 0xFFFF.
    new_sum = np.where(is_udp & (new_sum == 0), 0xFFFF, new_sum)
    new_sum = np.where(is_udp & (old_sum == 0), 0, new_sum)
    batch.write_uint(rel, new_sum, 2, r)


def _set_ipv4_addr(
    batch: PacketBatch, h: Headers, addr: ArrayLike, mask: ArrayLike | None, field: str
) -> None:
    rows = _rows(h, mask, h.ip_version == 4)
    if rows.size == 0:
        return
    new = _values(addr, rows, len(h)).astype(np.uint32)
    column: NDArray[np.uint32] = getattr(h, field)
    old = column[rows]
    old_w, new_w = as_words(old, 4), as_words(new, 4)
    l3 = h.l3_offset[rows].astype(np.int64)
    rel = l3 + (12 if field == "ipv4_src" else 16)
    batch.write_uint(rel, new, 4, rows)
    _update_checksum(batch, l3 + 10, rows, old_w, new_w)
    _adjust_l4(batch, h, rows, old_w, new_w)
    column[rows] = new


def set_ipv4_src(
    batch: PacketBatch, h: Headers, addr: ArrayLike, mask: ArrayLike | None = None
) -> None:
    """Rewrite the IPv4 source of valid IPv4 packets (where `mask`), fixing checksums.

    `addr` is one uint32 for all or one per packet of the batch. The IP header checksum and
    the TCP/UDP checksum (pseudo header) are updated incrementally; `h` is updated too.
    """
    _set_ipv4_addr(batch, h, addr, mask, "ipv4_src")


def set_ipv4_dst(
    batch: PacketBatch, h: Headers, addr: ArrayLike, mask: ArrayLike | None = None
) -> None:
    """As `set_ipv4_src`, for the destination address."""
    _set_ipv4_addr(batch, h, addr, mask, "ipv4_dst")


def _set_port(
    batch: PacketBatch, h: Headers, port: ArrayLike, mask: ArrayLike | None, field: str
) -> None:
    proto = h.protocol
    ok = (h.l4_offset >= 0) & ((proto == PROTO_TCP) | (proto == PROTO_UDP))
    rows = _rows(h, mask, ok)
    if rows.size == 0:
        return
    new = _values(port, rows, len(h)).astype(np.uint16)
    column: NDArray[np.uint16] = getattr(h, field)
    old = column[rows]
    rel = h.l4_offset[rows].astype(np.int64) + (0 if field == "sport" else 2)
    batch.write_uint(rel, new, 2, rows)
    _adjust_l4(batch, h, rows, old, new)
    column[rows] = new


def set_l4_sport(
    batch: PacketBatch, h: Headers, port: ArrayLike, mask: ArrayLike | None = None
) -> None:
    """Rewrite TCP/UDP source ports (first fragments and unfragmented packets), fixing checksums."""
    _set_port(batch, h, port, mask, "sport")


def set_l4_dport(
    batch: PacketBatch, h: Headers, port: ArrayLike, mask: ArrayLike | None = None
) -> None:
    """Rewrite TCP/UDP destination ports, fixing checksums."""
    _set_port(batch, h, port, mask, "dport")


def set_icmp_id(
    batch: PacketBatch, h: Headers, ident: ArrayLike, mask: ArrayLike | None = None
) -> None:
    """Rewrite the identifier of ICMP / ICMPv6 echo messages (NAT's port), fixing checksums."""
    t = h.icmp_type
    echo = (h.l4_offset >= 0) & ((t == 0) | (t == 8) | (t == 128) | (t == 129))
    echo &= (h.protocol == PROTO_ICMP) | (h.protocol == PROTO_ICMPV6)
    rows = _rows(h, mask, echo)
    if rows.size == 0:
        return
    new = _values(ident, rows, len(h)).astype(np.uint16)
    old = h.icmp_id[rows]
    l4 = h.l4_offset[rows].astype(np.int64)
    batch.write_uint(l4 + 4, new, 2, rows)
    _update_checksum(batch, l4 + 2, rows, old, new)
    h.icmp_id[rows] = new


def decrement_ttl(
    batch: PacketBatch, h: Headers, mask: ArrayLike | None = None
) -> NDArray[np.bool_]:
    """Decrement IPv4 TTL / IPv6 hop limit of valid IP packets; returns the expired mask.

    Packets whose TTL is 0 or 1 are left untouched and reported as expired (a router drops
    them and may answer with ICMP time exceeded). The IPv4 header checksum is updated
    incrementally.
    """
    is_ip = h.ip_version != 0
    rows = _rows(h, mask, is_ip)
    expired = np.zeros(len(h), np.bool_)
    ttl = h.ttl[rows]
    dying = ttl <= 1
    expired[rows[dying]] = True
    rows, ttl = rows[~dying], ttl[~dying]
    if rows.size == 0:
        return expired
    new_ttl = ttl - 1
    l3 = h.l3_offset[rows].astype(np.int64)
    v4 = h.ip_version[rows] == 4
    batch.write_uint(l3 + np.where(v4, 8, 7), new_ttl, 1, rows)
    r4, l4 = rows[v4], l3[v4]
    if r4.size:
        proto = h.protocol[r4].astype(np.uint16)
        old_w = (ttl[v4].astype(np.uint16) << 8) | proto
        new_w = (new_ttl[v4].astype(np.uint16) << 8) | proto
        _update_checksum(batch, l4 + 10, r4, old_w, new_w)
    h.ttl[rows] = new_ttl
    return expired


def _ipv4_header_sums(batch: PacketBatch, rows: NDArray[np.intp], h: Headers) -> NDArray[np.uint64]:
    start = batch.offsets[rows] + h.l3_offset[rows]
    return segment_sums(batch.data, start, start + h.ip_header_length[rows])


def fix_ipv4_checksums(batch: PacketBatch, h: Headers, mask: ArrayLike | None = None) -> None:
    """Recompute the header checksum of every valid IPv4 packet (where `mask`)."""
    rows = _rows(h, mask, h.ip_version == 4)
    if rows.size == 0:
        return
    rel = h.l3_offset[rows].astype(np.int64) + 10
    batch.write_uint(rel, 0, 2, rows)
    batch.write_uint(rel, finish_array(_ipv4_header_sums(batch, rows, h)), 2, rows)


def ipv4_checksums_ok(batch: PacketBatch, h: Headers) -> NDArray[np.bool_]:
    """Per packet: True when an IPv4 header checksum verifies (True for non-IPv4 packets)."""
    rows = _rows(h, None, h.ip_version == 4)
    ok = np.ones(len(h), np.bool_)
    ok[rows] = finish_array(_ipv4_header_sums(batch, rows, h)) == 0
    return ok


def _pseudo_sums(
    h: Headers, rows: NDArray[np.intp], length: NDArray[np.int64]
) -> NDArray[np.uint64]:
    """Unfolded pseudo-header sums (addresses, protocol, L4 length) for `rows`."""
    v6 = h.ip_version[rows] == 6
    total = h.protocol[rows].astype(np.uint64) + length.astype(np.uint64)
    for column in (h.ipv4_src, h.ipv4_dst):
        total += np.where(v6, 0, as_words(column[rows], 4).sum(axis=1, dtype=np.uint64))
    for half in (h.ipv6_src_hi, h.ipv6_src_lo, h.ipv6_dst_hi, h.ipv6_dst_lo):
        total += np.where(v6, as_words(half[rows], 8).sum(axis=1, dtype=np.uint64), 0)
    return total


def _l4_rows(
    h: Headers, mask: ArrayLike | None
) -> tuple[NDArray[np.intp], NDArray[np.int64], NDArray[np.int64]]:
    """Unfragmented TCP/UDP/ICMP(v6) rows, the checksum offset and the segment length."""
    proto = h.protocol
    kind = (proto == PROTO_TCP) | (proto == PROTO_UDP) | (proto == PROTO_ICMP)
    kind |= proto == PROTO_ICMPV6
    rows = _rows(h, mask, kind & (h.l4_offset >= 0) & ~h.is_fragment)
    l4 = h.l4_offset[rows].astype(np.int64)
    p = h.protocol[rows]
    csum_rel = l4 + np.where(p == PROTO_TCP, 16, np.where(p == PROTO_UDP, 6, 2))
    length = h.payload_offset[rows].astype(np.int64) + h.payload_length[rows] - l4
    return rows, csum_rel, length


def _l4_sums(
    batch: PacketBatch, h: Headers, rows: NDArray[np.intp], length: NDArray[np.int64]
) -> NDArray[np.uint64]:
    start = batch.offsets[rows] + h.l4_offset[rows]
    total = segment_sums(batch.data, start, start + length)
    # ICMPv4 has no pseudo header; everything else here does.
    with_pseudo = h.protocol[rows] != PROTO_ICMP
    return total + np.where(with_pseudo, _pseudo_sums(h, rows, length), 0)


def fix_l4_checksums(batch: PacketBatch, h: Headers, mask: ArrayLike | None = None) -> None:
    """Recompute TCP / UDP / ICMP / ICMPv6 checksums of unfragmented valid packets.

    Uses the IP addresses and protocol in `h` for the pseudo header, so call it after
    address rewrites recorded in `h` (the rewriters here keep `h` current).
    """
    rows, rel, length = _l4_rows(h, mask)
    if rows.size == 0:
        return
    batch.write_uint(rel, 0, 2, rows)
    csum = finish_array(_l4_sums(batch, h, rows, length))
    csum = np.where((h.protocol[rows] == PROTO_UDP) & (csum == 0), 0xFFFF, csum)
    batch.write_uint(rel, csum, 2, rows)


def l4_checksums_ok(batch: PacketBatch, h: Headers) -> NDArray[np.bool_]:
    """Per packet: does the TCP/UDP/ICMP checksum verify? (True where not applicable.)

    A zero UDP checksum over IPv4 means "none" and counts as correct.
    """
    rows, rel, length = _l4_rows(h, None)
    ok = np.ones(len(h), np.bool_)
    if rows.size == 0:
        return ok
    good = finish_array(_l4_sums(batch, h, rows, length)) == 0
    no_sum = (h.protocol[rows] == PROTO_UDP) & (h.ip_version[rows] == 4)
    no_sum &= batch.read_uint(rel, 2, rows) == 0
    ok[rows] = good | no_sum
    return ok
