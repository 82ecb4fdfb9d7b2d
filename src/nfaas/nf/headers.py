"""Vectorised header parsing: a PacketBatch in, a structure of per-packet field arrays out.

`parse(batch)` walks Ethernet (up to two 802.1Q/802.1ad tags), IPv4 or IPv6 (with the
common extension headers), TCP / UDP / SCTP / ICMP / ICMPv6 and GTP-U on UDP port 2152 for
every packet at once: each step gathers the bytes it needs from all packets at their own
offsets with numpy fancy indexing. There is no Python loop over packets.

Malformed packets never raise. Parsing a packet stops at the first problem; the packet gets
`valid = False`, an `error` code (`ParseError`) and the `error_offset` (byte offset in the
packet) of the header that is truncated or of the field that is wrong. Fields of the layers
before the problem stay filled in, so a firewall can still act on them.

`parse(batch, at=offsets)` parses IP packets that start at per-packet offsets (no Ethernet);
`parse_inner(batch, outer)` uses that for the inner packet of GTP-U G-PDUs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nfaas.nf.batch import Index, PacketBatch
from nfaas.nf.flowtable import mix64

__all__ = [
    "ETH_IPV4",
    "ETH_IPV6",
    "GTPU_PORT",
    "GTP_EXT_PDU_SESSION",
    "MAX_GTP_EXT_TYPES",
    "Headers",
    "ParseError",
    "flow_hash",
    "parse",
    "parse_inner",
]

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
GTPU_PORT = 2152
GTP_G_PDU = 0xFF
GTP_EXT_PDU_SESSION = 0x85
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_SCTP = 1, 6, 17, 58, 132
IPV6_EXT_HOP_BY_HOP, IPV6_EXT_ROUTING, IPV6_EXT_FRAGMENT, IPV6_EXT_AH, IPV6_EXT_DEST_OPTS = (
    0,
    43,
    44,
    51,
    60,
)
# Next-header values the IPv6 parser walks through as extension headers.
_IS_IPV6_EXT = np.zeros(256, np.bool_)
_IS_IPV6_EXT[
    [IPV6_EXT_HOP_BY_HOP, IPV6_EXT_ROUTING, IPV6_EXT_FRAGMENT, IPV6_EXT_AH, IPV6_EXT_DEST_OPTS]
] = True
MAX_IPV6_EXT = 8  # extension headers walked before giving up
MAX_GTP_EXT = 16  # GTP-U extension headers walked before giving up
MAX_GTP_EXT_TYPES = 4  # extension header types remembered per packet (gtp_ext_types columns)

I32 = NDArray[np.int32]
I64 = NDArray[np.int64]
IntP = NDArray[np.intp]


class ParseError(IntEnum):
    """Why parsing a packet stopped (`OK` when it did not)."""

    OK = 0
    TRUNCATED_ETHERNET = 1
    TRUNCATED_VLAN = 2
    TRUNCATED_IP = 3
    BAD_IP_VERSION = 4
    BAD_IHL = 5
    IP_LENGTH_MISMATCH = 6
    TRUNCATED_IPV6_EXT = 7
    TOO_MANY_IPV6_EXT = 8
    TRUNCATED_L4 = 9
    BAD_TCP_OFFSET = 10
    UDP_LENGTH_MISMATCH = 11
    TRUNCATED_GTP = 12
    BAD_GTP = 13
    GTP_LENGTH_MISMATCH = 14
    BAD_GTP_EXT = 15
    NO_HEADER = 16  # parse(at=...) was given a negative offset: nothing to parse


@dataclass(slots=True, eq=False)
class Headers:
    """Per-packet header fields, one numpy array per field (structure of arrays).

    Offsets are bytes from the start of each packet; -1 means "not present". Fields of
    layers a packet does not have are 0. IPv6 addresses are two uint64 halves (hi, lo).
    """

    valid: NDArray[np.bool_]
    error: NDArray[np.uint8]
    error_offset: I32
    # Ethernet and VLAN
    eth_dst: NDArray[np.uint64]
    eth_src: NDArray[np.uint64]
    ethertype: NDArray[np.uint16]  # after the VLAN tags
    vlan_count: NDArray[np.uint8]
    vlan_id: NDArray[np.uint16]  # outer tag
    vlan_pcp: NDArray[np.uint8]
    inner_vlan_id: NDArray[np.uint16]  # second tag (QinQ)
    # IP
    l3_offset: I32
    ip_version: NDArray[np.uint8]
    ip_header_length: NDArray[np.uint16]  # IPv4 IHL*4; IPv6 40 + extension headers
    ip_tos: NDArray[np.uint8]  # IPv4 TOS / IPv6 traffic class
    ip_total_length: NDArray[np.uint32]  # IPv4 total length; IPv6 40 + payload length
    ip_id: NDArray[np.uint32]  # IPv4 identification / IPv6 fragment header identification
    ttl: NDArray[np.uint8]  # TTL / hop limit
    protocol: NDArray[np.uint8]  # IPv4 protocol / IPv6 next header after extension headers
    ipv6_flow_label: NDArray[np.uint32]
    ipv6_ext_count: NDArray[np.uint8]
    ipv4_src: NDArray[np.uint32]
    ipv4_dst: NDArray[np.uint32]
    ipv6_src_hi: NDArray[np.uint64]
    ipv6_src_lo: NDArray[np.uint64]
    ipv6_dst_hi: NDArray[np.uint64]
    ipv6_dst_lo: NDArray[np.uint64]
    dont_fragment: NDArray[np.bool_]
    more_fragments: NDArray[np.bool_]
    frag_offset: NDArray[np.uint16]  # in 8-byte units
    # L4
    l4_offset: I32  # -1 for non-first fragments and non-IP packets
    sport: NDArray[np.uint16]  # TCP / UDP / SCTP
    dport: NDArray[np.uint16]
    tcp_flags: NDArray[np.uint16]  # 9 bits: NS CWR ECE URG ACK PSH RST SYN FIN
    tcp_seq: NDArray[np.uint32]
    tcp_ack: NDArray[np.uint32]
    tcp_window: NDArray[np.uint16]
    icmp_type: NDArray[np.uint8]  # ICMP and ICMPv6
    icmp_code: NDArray[np.uint8]
    icmp_id: NDArray[np.uint16]  # echo request / reply only
    icmp_seq: NDArray[np.uint16]
    payload_offset: I32  # after the L4 header (L3 payload when there is no L4 parse)
    payload_length: I32
    # GTP-U
    is_gtpu: NDArray[np.bool_]
    gtp_offset: I32
    gtp_flags: NDArray[np.uint8]  # first octet: version(3) PT E S PN
    gtp_msg_type: NDArray[np.uint8]
    gtp_length: NDArray[np.uint16]
    gtp_teid: NDArray[np.uint32]
    gtp_seq: NDArray[np.uint16]  # meaningful when gtp_s
    gtp_npdu: NDArray[np.uint8]  # meaningful when gtp_pn
    gtp_next_ext: NDArray[np.uint8]  # first next-extension-header type (0: none)
    gtp_ext_count: NDArray[np.uint8]
    gtp_ext_types: NDArray[np.uint8]  # (n, MAX_GTP_EXT_TYPES): types of the first extensions
    has_pdu_session: NDArray[np.bool_]  # PDU Session Container (0x85) present
    gtp_pdu_type: NDArray[np.uint8]  # 0 downlink, 1 uplink
    gtp_qfi: NDArray[np.uint8]
    gtp_payload_offset: I32
    gtp_payload_length: I32
    gtp_inner_offset: I32  # inner IP packet of a G-PDU, else -1

    @classmethod
    def empty(cls, n: int) -> Headers:
        """All fields zero (offsets -1), all packets valid."""
        values: dict[str, NDArray[Any]] = {}
        for f in dataclasses.fields(cls):
            dtype = np.dtype(_DTYPES[f.name])
            shape: tuple[int, ...] = (n, MAX_GTP_EXT_TYPES) if f.name == "gtp_ext_types" else (n,)
            if f.name.endswith("offset") and dtype == np.int32:
                values[f.name] = np.full(shape, -1, dtype)
            else:
                values[f.name] = np.zeros(shape, dtype)
        values["valid"][:] = True
        return cls(**values)

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def select(self, which: Index) -> Headers:
        """The rows picked by a mask / index array / slice (as `PacketBatch.select`)."""
        return Headers(**{f.name: getattr(self, f.name)[which] for f in dataclasses.fields(self)})

    def error_counts(self) -> dict[ParseError, int]:
        """How many packets failed with each error (errors that occurred only)."""
        counts = np.bincount(self.error, minlength=len(ParseError))
        return {ParseError(int(c)): int(counts[c]) for c in np.flatnonzero(counts) if c}

    @property
    def is_fragment(self) -> NDArray[np.bool_]:
        return self.more_fragments | (self.frag_offset != 0)

    @property
    def gtp_version(self) -> NDArray[np.uint8]:
        return (self.gtp_flags >> 5).astype(np.uint8)

    @property
    def gtp_pt(self) -> NDArray[np.bool_]:
        return (self.gtp_flags & 0x10) != 0

    @property
    def gtp_e(self) -> NDArray[np.bool_]:
        return (self.gtp_flags & 0x04) != 0

    @property
    def gtp_s(self) -> NDArray[np.bool_]:
        return (self.gtp_flags & 0x02) != 0

    @property
    def gtp_pn(self) -> NDArray[np.bool_]:
        return (self.gtp_flags & 0x01) != 0


_DTYPES: dict[str, str] = {
    "valid": "bool",
    "error": "uint8",
    "error_offset": "int32",
    "eth_dst": "uint64",
    "eth_src": "uint64",
    "ethertype": "uint16",
    "vlan_count": "uint8",
    "vlan_id": "uint16",
    "vlan_pcp": "uint8",
    "inner_vlan_id": "uint16",
    "l3_offset": "int32",
    "ip_version": "uint8",
    "ip_header_length": "uint16",
    "ip_tos": "uint8",
    "ip_total_length": "uint32",
    "ip_id": "uint32",
    "ttl": "uint8",
    "protocol": "uint8",
    "ipv6_flow_label": "uint32",
    "ipv6_ext_count": "uint8",
    "ipv4_src": "uint32",
    "ipv4_dst": "uint32",
    "ipv6_src_hi": "uint64",
    "ipv6_src_lo": "uint64",
    "ipv6_dst_hi": "uint64",
    "ipv6_dst_lo": "uint64",
    "dont_fragment": "bool",
    "more_fragments": "bool",
    "frag_offset": "uint16",
    "l4_offset": "int32",
    "sport": "uint16",
    "dport": "uint16",
    "tcp_flags": "uint16",
    "tcp_seq": "uint32",
    "tcp_ack": "uint32",
    "tcp_window": "uint16",
    "icmp_type": "uint8",
    "icmp_code": "uint8",
    "icmp_id": "uint16",
    "icmp_seq": "uint16",
    "payload_offset": "int32",
    "payload_length": "int32",
    "is_gtpu": "bool",
    "gtp_offset": "int32",
    "gtp_flags": "uint8",
    "gtp_msg_type": "uint8",
    "gtp_length": "uint16",
    "gtp_teid": "uint32",
    "gtp_seq": "uint16",
    "gtp_npdu": "uint8",
    "gtp_next_ext": "uint8",
    "gtp_ext_count": "uint8",
    "gtp_ext_types": "uint8",
    "has_pdu_session": "bool",
    "gtp_pdu_type": "uint8",
    "gtp_qfi": "uint8",
    "gtp_payload_offset": "int32",
    "gtp_payload_length": "int32",
    "gtp_inner_offset": "int32",
}


def _keep(mask: NDArray[np.bool_], *arrays: NDArray[Any]) -> list[NDArray[Any]]:
    return [a[mask] for a in arrays]


class _Parser:
    """One parse run: the byte buffer, per-packet bases and limits, and the output."""

    def __init__(self, batch: PacketBatch, limit: I64) -> None:
        # Every gather below reads only rows whose bounds were checked first, so positions
        # stay inside each packet and no padding or clipping is needed.
        self.d = batch.data
        self.base = batch.offsets
        self.limit = limit
        self.n = len(batch)
        self.h = Headers.empty(self.n)

    # -- byte gathers (positions are absolute indices into the buffer) ------------------

    def u8(self, p: I64) -> NDArray[np.uint8]:
        return self.d[p]

    def u16(self, p: I64) -> NDArray[np.uint16]:
        d = self.d
        return (d[p].astype(np.uint16) << np.uint16(8)) | d[p + 1]

    # Shifts of single-byte gathers beat a 2-D gather viewed as big-endian words.
    def u32(self, p: I64) -> NDArray[np.uint32]:
        d = self.d
        hi = (d[p].astype(np.uint32) << np.uint32(24)) | (
            d[p + 1].astype(np.uint32) << np.uint32(16)
        )
        return hi | (d[p + 2].astype(np.uint32) << np.uint32(8)) | d[p + 3]

    def u64(self, p: I64) -> NDArray[np.uint64]:
        return (self.u32(p).astype(np.uint64) << np.uint64(32)) | self.u32(p + 4)

    def mac48(self, p: I64) -> NDArray[np.uint64]:
        return (self.u16(p).astype(np.uint64) << np.uint64(32)) | self.u32(p + 2)

    def addr16(self, p: I64) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
        return self.u64(p), self.u64(p + 8)

    def rows(self, i: IntP) -> IntP | slice:
        """`i` as an index for writing output columns; a slice when it covers every packet
        (rows are kept in order, so then `i` is 0..n-1), which numpy assigns much faster."""
        return slice(None) if i.shape[0] == self.n else i

    # -- failures -----------------------------------------------------------------------

    def flag(self, i: IntP, code: ParseError, where: ArrayLike) -> None:
        h = self.h
        h.valid[self.rows(i)] = False
        h.error[self.rows(i)] = code
        h.error_offset[self.rows(i)] = where

    def check(
        self, ok: NDArray[np.bool_], code: ParseError, where: I64, i: IntP, *arrays: NDArray[Any]
    ) -> list[NDArray[Any]]:
        """Flag rows where `ok` is false; return `i` and `arrays` without them."""
        if ok.all():
            return [i, *arrays]
        bad = ~ok
        self.flag(i[bad], code, where[bad])
        return _keep(ok, i, *arrays)

    def retire(
        self,
        bad: NDArray[np.bool_],
        code: ParseError,
        i: IntP,
        off: I64,
        dead: NDArray[np.bool_],
        a: IntP,
        *arrays: NDArray[Any],
    ) -> list[NDArray[Any]]:
        """In a walk along a header chain over the rows `a` of `i`: flag rows `a[bad]` with
        `code` at their offset `off`, mark them `dead`; return `a` and `arrays` without them."""
        if not bad.any():
            return [a, *arrays]
        gone = a[bad]
        self.flag(i[gone], code, off[gone])
        dead[gone] = True
        return _keep(~bad, a, *arrays)

    # -- layers -------------------------------------------------------------------------

    def ethernet(self) -> None:
        h = self.h
        n = self.base.shape[0]
        i = np.arange(n, dtype=np.intp)
        zero = np.zeros(n, np.int64)
        i, b, lim = self.check(
            self.limit >= 14, ParseError.TRUNCATED_ETHERNET, zero, i, self.base, self.limit
        )
        h.eth_dst[self.rows(i)] = self.mac48(b)
        h.eth_src[self.rows(i)] = self.mac48(b + 6)
        et = self.u16(b + 12)
        l3 = np.full(i.shape[0], 14, np.int64)
        for depth in range(2):
            tagged = (et == VLAN_TPIDS[0]) | (et == VLAN_TPIDS[1]) | (et == VLAN_TPIDS[2])
            if not tagged.any():
                break
            ok = ~tagged | (l3 + 4 <= lim)
            i, b, lim, l3, et, tagged = self.check(
                ok, ParseError.TRUNCATED_VLAN, l3 - 2, i, b, lim, l3, et, tagged
            )
            t = np.flatnonzero(tagged)
            tci = self.u16(b[t] + l3[t])
            et[t] = self.u16(b[t] + l3[t] + 2)
            l3[t] += 4
            it = i[t]
            h.vlan_count[it] = depth + 1
            if depth == 0:
                h.vlan_id[it] = tci & 0x0FFF
                h.vlan_pcp[it] = tci >> 13
            else:
                h.inner_vlan_id[it] = tci & 0x0FFF
        h.ethertype[self.rows(i)] = et
        h.l3_offset[self.rows(i)] = l3
        # Non-IP frames are valid; their payload is everything after the Ethernet header.
        other = (et != ETH_IPV4) & (et != ETH_IPV6)
        io = i[other]
        h.payload_offset[io] = l3[other]
        h.payload_length[io] = lim[other] - l3[other]
        v4 = et == ETH_IPV4
        v6 = ~other & ~v4
        self.ipv4(i[v4], b[v4], lim[v4], l3[v4])
        self.ipv6(i[v6], b[v6], lim[v6], l3[v6])

    def ip_at(self, at: I64) -> None:
        """IP packets that start at per-packet offsets `at` (-1: nothing to parse)."""
        h = self.h
        n = self.base.shape[0]
        i = np.arange(n, dtype=np.intp)
        present = at >= 0
        if not present.all():
            self.flag(i[~present], ParseError.NO_HEADER, -1)
        i, b, lim, l3 = _keep(present, i, self.base, self.limit, at)
        h.l3_offset[self.rows(i)] = l3
        i, b, lim, l3 = self.check(l3 < lim, ParseError.TRUNCATED_IP, l3, i, b, lim, l3)
        version = self.u8(b + l3) >> 4
        i, b, lim, l3, version = self.check(
            (version == 4) | (version == 6), ParseError.BAD_IP_VERSION, l3, i, b, lim, l3, version
        )
        v4 = version == 4
        h.ethertype[self.rows(i)] = np.where(v4, ETH_IPV4, ETH_IPV6)
        v6 = ~v4
        self.ipv4(i[v4], b[v4], lim[v4], l3[v4])
        self.ipv6(i[v6], b[v6], lim[v6], l3[v6])

    def ip_header(
        self, version: int, size: int, i: IntP, b: I64, lim: I64, l3: I64
    ) -> list[NDArray[Any]]:
        """Rows with a whole `size`-byte IPv`version` header at `l3` (the others are flagged);
        sets `ip_version` and returns i, b, lim, l3, the header's position and first byte."""
        i, b, lim, l3 = self.check(l3 + size <= lim, ParseError.TRUNCATED_IP, l3, i, b, lim, l3)
        p = b + l3
        b0 = self.u8(p)
        i, b, lim, l3, p, b0 = self.check(
            (b0 >> 4) == version, ParseError.BAD_IP_VERSION, l3, i, b, lim, l3, p, b0
        )
        self.h.ip_version[self.rows(i)] = version
        return [i, b, lim, l3, p, b0]

    def ipv4(self, i: IntP, b: I64, lim: I64, l3: I64) -> None:
        h = self.h
        i, b, lim, l3, p, b0 = self.ip_header(4, 20, i, b, lim, l3)
        hlen = (b0 & 0x0F).astype(np.int64) * 4
        i, b, lim, l3, p, hlen = self.check(
            hlen >= 20, ParseError.BAD_IHL, l3, i, b, lim, l3, p, hlen
        )
        i, b, lim, l3, p, hlen = self.check(
            l3 + hlen <= lim, ParseError.TRUNCATED_IP, l3, i, b, lim, l3, p, hlen
        )
        total = self.u16(p + 2).astype(np.int64)
        h.ip_header_length[self.rows(i)] = hlen
        h.ip_total_length[self.rows(i)] = total
        h.ip_tos[self.rows(i)] = self.u8(p + 1)
        h.ip_id[self.rows(i)] = self.u16(p + 4)
        frag = self.u16(p + 6)
        h.dont_fragment[self.rows(i)] = (frag & 0x4000) != 0
        more = (frag & 0x2000) != 0
        h.more_fragments[self.rows(i)] = more
        foff = frag & 0x1FFF
        h.frag_offset[self.rows(i)] = foff
        h.ttl[self.rows(i)] = self.u8(p + 8)
        proto = self.u8(p + 9)
        h.protocol[self.rows(i)] = proto
        h.ipv4_src[self.rows(i)] = self.u32(p + 12)
        h.ipv4_dst[self.rows(i)] = self.u32(p + 16)
        ok = (total >= hlen) & (l3 + total <= lim)
        i, b, l3, hlen, total, proto, foff, more = self.check(
            ok, ParseError.IP_LENGTH_MISMATCH, l3 + 2, i, b, l3, hlen, total, proto, foff, more
        )
        self.l4(i, b, l3 + hlen, l3 + total, proto, foff, more)

    def ipv6(self, i: IntP, b: I64, lim: I64, l3: I64) -> None:
        h = self.h
        i, b, lim, l3, p, _ = self.ip_header(6, 40, i, b, lim, l3)
        w0 = self.u32(p)
        h.ip_tos[self.rows(i)] = (w0 >> 20) & 0xFF
        h.ipv6_flow_label[self.rows(i)] = w0 & 0xFFFFF
        plen = self.u16(p + 4).astype(np.int64)
        nh = self.u8(p + 6)
        h.ttl[self.rows(i)] = self.u8(p + 7)
        h.ipv6_src_hi[self.rows(i)], h.ipv6_src_lo[self.rows(i)] = self.addr16(p + 8)
        h.ipv6_dst_hi[self.rows(i)], h.ipv6_dst_lo[self.rows(i)] = self.addr16(p + 24)
        # Payload length 0 with a hop-by-hop header is a jumbogram: the frame sets the end.
        jumbo = (plen == 0) & (nh == IPV6_EXT_HOP_BY_HOP)
        total = np.where(jumbo, lim - l3, plen + 40)
        h.ip_total_length[self.rows(i)] = total
        h.protocol[self.rows(i)] = nh
        i, b, l3, total, nh = self.check(
            l3 + total <= lim, ParseError.IP_LENGTH_MISMATCH, l3 + 4, i, b, l3, total, nh
        )
        end = l3 + total
        off = l3 + 40
        foff = np.zeros(i.shape[0], np.uint16)
        more = np.zeros(i.shape[0], np.bool_)
        dead = np.zeros(i.shape[0], np.bool_)
        count = np.zeros(i.shape[0], np.uint8)
        for _ in range(MAX_IPV6_EXT):
            a = np.flatnonzero(_IS_IPV6_EXT[nh] & ~dead)
            if a.size == 0:
                break
            (a,) = self.retire(off[a] + 8 > end[a], ParseError.TRUNCATED_IPV6_EXT, i, off, dead, a)
            pa = b[a] + off[a]
            kind = nh[a]
            size = np.where(
                kind == IPV6_EXT_FRAGMENT,
                8,
                np.where(
                    kind == IPV6_EXT_AH,
                    (self.u8(pa + 1).astype(np.int64) + 2) * 4,
                    (self.u8(pa + 1).astype(np.int64) + 1) * 8,
                ),
            )
            a, pa, kind, size = self.retire(
                off[a] + size > end[a],
                ParseError.TRUNCATED_IPV6_EXT,
                i,
                off,
                dead,
                a,
                pa,
                kind,
                size,
            )
            fr = kind == IPV6_EXT_FRAGMENT
            if fr.any():
                af, pf = a[fr], pa[fr]
                fw = self.u16(pf + 2)
                foff[af] = fw >> 3
                more[af] = (fw & 1) != 0
                h.ip_id[i[af]] = self.u32(pf + 4)
            nh[a] = self.u8(pa)
            off[a] += size
            count[a] += 1
        else:
            stuck = np.flatnonzero(_IS_IPV6_EXT[nh] & ~dead)
            if stuck.size:
                self.flag(i[stuck], ParseError.TOO_MANY_IPV6_EXT, off[stuck])
                dead[stuck] = True
        h.ipv6_ext_count[self.rows(i)] = count
        h.frag_offset[self.rows(i)] = foff
        h.more_fragments[self.rows(i)] = more
        h.protocol[self.rows(i)] = nh
        h.ip_header_length[self.rows(i)] = np.where(dead, 0, off - l3)
        alive = ~dead
        i, b, off, end, nh, foff, more = _keep(alive, i, b, off, end, nh, foff, more)
        self.l4(i, b, off, end, nh, foff, more)

    def l4(
        self,
        i: IntP,
        b: I64,
        l4: I64,
        end: I64,
        proto: NDArray[np.uint8],
        foff: NDArray[np.integer[Any]],
        more: NDArray[np.bool_],
    ) -> None:
        h = self.h
        # Non-first fragments carry no L4 header: their payload is the fragment data.
        first = foff == 0
        rest = ~first
        ir = i[rest]
        h.payload_offset[ir] = l4[rest]
        h.payload_length[ir] = end[rest] - l4[rest]
        i, b, l4, end, proto, more = _keep(first, i, b, l4, end, proto, more)
        h.l4_offset[self.rows(i)] = l4
        h.payload_offset[self.rows(i)] = l4
        h.payload_length[self.rows(i)] = end - l4
        for number, handler in (
            (PROTO_UDP, self.udp),
            (PROTO_TCP, self.tcp),
            (PROTO_ICMP, self.icmp),
            (PROTO_ICMPV6, self.icmp),
            (PROTO_SCTP, self.sctp),
        ):
            m = proto == number
            if m.any():
                handler(i[m], b[m], l4[m], end[m], more[m])

    def udp(self, i: IntP, b: I64, l4: I64, end: I64, more: NDArray[np.bool_]) -> None:
        h = self.h
        i, b, l4, end, more = self.check(
            l4 + 8 <= end, ParseError.TRUNCATED_L4, l4, i, b, l4, end, more
        )
        p = b + l4
        sport = self.u16(p)
        dport = self.u16(p + 2)
        h.sport[self.rows(i)] = sport
        h.dport[self.rows(i)] = dport
        ulen = self.u16(p + 4).astype(np.int64)
        # A first fragment holds only part of the datagram that the UDP length describes.
        ok = more | ((ulen >= 8) & (l4 + ulen <= end))
        i, b, l4, end, more, ulen, sport, dport = self.check(
            ok, ParseError.UDP_LENGTH_MISMATCH, l4 + 4, i, b, l4, end, more, ulen, sport, dport
        )
        dgram_end = np.where(more, end, l4 + ulen)
        h.payload_offset[self.rows(i)] = l4 + 8
        h.payload_length[self.rows(i)] = dgram_end - l4 - 8
        # TS 29.281 §4.4.2.3: G-PDUs go to port 2152; the source port is any. Keying on the
        # destination alone keeps a plain UDP flow from port 2152 from being read as GTP-U.
        gtp = ~more & (dport == GTPU_PORT)
        if gtp.any():
            self.gtpu(i[gtp], b[gtp], l4[gtp] + 8, dgram_end[gtp])

    def tcp(self, i: IntP, b: I64, l4: I64, end: I64, more: NDArray[np.bool_]) -> None:
        h = self.h
        i, b, l4, end = self.check(l4 + 20 <= end, ParseError.TRUNCATED_L4, l4, i, b, l4, end)
        p = b + l4
        h.sport[self.rows(i)] = self.u16(p)
        h.dport[self.rows(i)] = self.u16(p + 2)
        h.tcp_seq[self.rows(i)] = self.u32(p + 4)
        h.tcp_ack[self.rows(i)] = self.u32(p + 8)
        w12 = self.u16(p + 12)
        h.tcp_flags[self.rows(i)] = w12 & 0x01FF
        h.tcp_window[self.rows(i)] = self.u16(p + 14)
        hlen = (w12 >> 12).astype(np.int64) * 4
        i, l4, end, hlen = self.check(
            hlen >= 20, ParseError.BAD_TCP_OFFSET, l4 + 12, i, l4, end, hlen
        )
        i, l4, end, hlen = self.check(
            l4 + hlen <= end, ParseError.TRUNCATED_L4, l4, i, l4, end, hlen
        )
        h.payload_offset[self.rows(i)] = l4 + hlen
        h.payload_length[self.rows(i)] = end - l4 - hlen

    def icmp(self, i: IntP, b: I64, l4: I64, end: I64, more: NDArray[np.bool_]) -> None:
        h = self.h
        i, b, l4, end = self.check(l4 + 8 <= end, ParseError.TRUNCATED_L4, l4, i, b, l4, end)
        p = b + l4
        kind = self.u8(p)
        h.icmp_type[self.rows(i)] = kind
        h.icmp_code[self.rows(i)] = self.u8(p + 1)
        echo = (kind == 0) | (kind == 8) | (kind == 128) | (kind == 129)
        h.icmp_id[i[echo]] = self.u16(p[echo] + 4)
        h.icmp_seq[i[echo]] = self.u16(p[echo] + 6)
        h.payload_offset[self.rows(i)] = l4 + 8
        h.payload_length[self.rows(i)] = end - l4 - 8

    def sctp(self, i: IntP, b: I64, l4: I64, end: I64, more: NDArray[np.bool_]) -> None:
        h = self.h
        i, b, l4, end = self.check(l4 + 12 <= end, ParseError.TRUNCATED_L4, l4, i, b, l4, end)
        p = b + l4
        h.sport[self.rows(i)] = self.u16(p)
        h.dport[self.rows(i)] = self.u16(p + 2)
        h.payload_offset[self.rows(i)] = l4 + 12
        h.payload_length[self.rows(i)] = end - l4 - 12

    def gtpu(self, i: IntP, b: I64, g: I64, end: I64) -> None:
        """GTP-U header (TS 29.281 §5) at offset `g`, inside a UDP datagram ending at `end`."""
        h = self.h
        h.is_gtpu[self.rows(i)] = True
        h.gtp_offset[self.rows(i)] = g
        i, b, g, end = self.check(g + 8 <= end, ParseError.TRUNCATED_GTP, g, i, b, g, end)
        p = b + g
        flags = self.u8(p)
        h.gtp_flags[self.rows(i)] = flags
        # Version 1 with PT=1 (GTP, not GTP'); anything else is not GTP-U.
        i, b, g, end, p, flags = self.check(
            (flags & 0xF0) == 0x30, ParseError.BAD_GTP, g, i, b, g, end, p, flags
        )
        msg = self.u8(p + 1)
        glen = self.u16(p + 2).astype(np.int64)
        h.gtp_msg_type[self.rows(i)] = msg
        h.gtp_length[self.rows(i)] = glen
        h.gtp_teid[self.rows(i)] = self.u32(p + 4)
        gend = g + 8 + glen
        i, b, g, p, flags, msg, gend = self.check(
            gend <= end, ParseError.GTP_LENGTH_MISMATCH, g + 2, i, b, g, p, flags, msg, gend
        )
        optional = (flags & 0x07) != 0
        ok = ~optional | (g + 12 <= gend)
        i, b, g, p, flags, msg, gend, optional = self.check(
            ok, ParseError.TRUNCATED_GTP, g + 8, i, b, g, p, flags, msg, gend, optional
        )
        off = g + 8 + optional * 4
        nxt = np.zeros(i.shape[0], np.uint8)
        o = np.flatnonzero(optional)
        if o.size:
            po = p[o]
            h.gtp_seq[i[o]] = self.u16(po + 8)
            h.gtp_npdu[i[o]] = self.u8(po + 10)
            # The next-extension-type octet counts only when E is set.
            nxt[o] = np.where((flags[o] & 0x04) != 0, self.u8(po + 11), 0)
        h.gtp_next_ext[self.rows(i)] = nxt
        dead = np.zeros(i.shape[0], np.bool_)
        count = np.zeros(i.shape[0], np.int64)
        for k in range(MAX_GTP_EXT + 1):
            a = np.flatnonzero((nxt != 0) & ~dead)
            if a.size == 0:
                break
            if k == MAX_GTP_EXT:
                self.flag(i[a], ParseError.BAD_GTP_EXT, off[a])
                dead[a] = True
                break
            (a,) = self.retire(off[a] + 4 > gend[a], ParseError.BAD_GTP_EXT, i, off, dead, a)
            pa = b[a] + off[a]
            size = self.u8(pa).astype(np.int64) * 4
            bad = (size == 0) | (off[a] + size > gend[a])
            a, pa, size = self.retire(bad, ParseError.BAD_GTP_EXT, i, off, dead, a, pa, size)
            kind = nxt[a]
            if k < MAX_GTP_EXT_TYPES:
                h.gtp_ext_types[i[a], k] = kind
            count[a] += 1
            pdu = kind == GTP_EXT_PDU_SESSION
            if pdu.any():
                ip, pp = i[a[pdu]], pa[pdu]
                h.has_pdu_session[ip] = True
                h.gtp_pdu_type[ip] = self.u8(pp + 1) >> 4
                h.gtp_qfi[ip] = self.u8(pp + 2) & 0x3F
            nxt[a] = self.u8(pa + size - 1)
            off[a] += size
        h.gtp_ext_count[self.rows(i)] = np.minimum(count, 255)
        i, off, gend, msg = _keep(~dead, i, off, gend, msg)
        h.gtp_payload_offset[self.rows(i)] = off
        h.gtp_payload_length[self.rows(i)] = gend - off
        h.gtp_inner_offset[self.rows(i)] = np.where(msg == GTP_G_PDU, off, -1)


def parse(batch: PacketBatch, at: ArrayLike | None = None, end: ArrayLike | None = None) -> Headers:
    """Parse every packet of `batch`; never raises on packet contents.

    Without `at`, packets are Ethernet frames. With `at` (per-packet offsets, -1 for none),
    each packet holds an IP packet at that offset (e.g. the inner packet of a tunnel), and
    `end` (optional, per packet) bounds it instead of the packet length.
    """
    n = len(batch)
    limit = batch.lengths.astype(np.int64)
    if end is not None:
        limit = np.minimum(limit, np.broadcast_to(np.asarray(end, np.int64), (n,)))
    parser = _Parser(batch, limit)
    if at is None:
        parser.ethernet()
    else:
        parser.ip_at(np.broadcast_to(np.asarray(at, np.int64), (n,)).copy())
    return parser.h


def parse_inner(batch: PacketBatch, outer: Headers) -> Headers:
    """Parse the inner IP packets of GTP-U G-PDUs (packets without one get NO_HEADER)."""
    inner_end = outer.gtp_payload_offset.astype(np.int64) + outer.gtp_payload_length
    return parse(batch, at=outer.gtp_inner_offset, end=inner_end)


# -- flow hashing ---------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _endpoint_keys(h: Headers) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """One 64-bit key per endpoint (address, port) of each packet."""
    v6 = h.ip_version == 6
    src = np.where(v6, mix64(h.ipv6_src_hi) ^ h.ipv6_src_lo, h.ipv4_src.astype(np.uint64))
    dst = np.where(v6, mix64(h.ipv6_dst_hi) ^ h.ipv6_dst_lo, h.ipv4_dst.astype(np.uint64))
    src = mix64(src) + h.sport.astype(np.uint64)
    dst = mix64(dst) + h.dport.astype(np.uint64)
    return src, dst


def flow_hash(h: Headers, symmetric: bool = False, seed: int = 0) -> NDArray[np.uint64]:
    """64-bit hash of each packet's 5-tuple (addresses, ports, protocol).

    With `symmetric=True` both directions of a connection hash alike (order-independent
    combination of the two endpoints), for per-connection state; otherwise the hash depends
    on direction, as load balancers usually want. Non-IP packets all hash alike; packets
    without ports (ICMP, non-first fragments) hash on addresses and protocol only.
    """
    src, dst = _endpoint_keys(h)
    if symmetric:
        src, dst = np.minimum(src, dst), np.maximum(src, dst)
    s = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    x = mix64(src ^ s) * _GOLDEN + dst
    return mix64(x ^ (h.protocol.astype(np.uint64) << np.uint64(56)))
