"""The 5-tuples of parsed packets, in the one shape the stateful firewall needs them.

A `PacketTuples` holds, for chosen packets of a parsed batch, the fields the rules match on
(IP version, addresses as two 64-bit halves, protocol, ports) as uniform columns for IPv4
and IPv6 alike. It converts to the classifiers' `FlowKeys` and gives a seeded 64-bit key
per tuple for the verdict cache, which compares the stored columns on every hit, so the
key only has to be well spread, not collision-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from nfaas.nf.flowtable import mix64
from nfaas.nf.headers import Headers
from nfaas.vnfs.firewall.classifier import FlowKeys

__all__ = ["PacketTuples"]

U64 = NDArray[np.uint64]
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class PacketTuples:
    """Rule-relevant fields of n packets; IPv4 addresses sit in `*_lo` with `*_hi` zero.

    Ports are the parser's: 0 for ICMP and for non-first fragments (as `FlowKeys` wants).
    """

    version: NDArray[np.uint8]
    src_hi: U64
    src_lo: U64
    dst_hi: U64
    dst_lo: U64
    proto: NDArray[np.uint8]
    sport: NDArray[np.uint16]
    dport: NDArray[np.uint16]

    @classmethod
    def of(cls, h: Headers, rows: NDArray[np.intp]) -> PacketTuples:
        """The tuples of the IP packets `rows` of a parsed batch."""
        version = h.ip_version[rows]
        v6 = version == 6
        zero = np.uint64(0)
        if v6.any():
            src_hi = np.where(v6, h.ipv6_src_hi[rows], zero)
            dst_hi = np.where(v6, h.ipv6_dst_hi[rows], zero)
            src_lo = np.where(v6, h.ipv6_src_lo[rows], h.ipv4_src[rows].astype(np.uint64))
            dst_lo = np.where(v6, h.ipv6_dst_lo[rows], h.ipv4_dst[rows].astype(np.uint64))
        else:
            src_hi = dst_hi = np.zeros(rows.shape[0], np.uint64)
            src_lo = h.ipv4_src[rows].astype(np.uint64)
            dst_lo = h.ipv4_dst[rows].astype(np.uint64)
        return cls(
            version, src_hi, src_lo, dst_hi, dst_lo, h.protocol[rows], h.sport[rows], h.dport[rows]
        )

    def __len__(self) -> int:
        return int(self.version.shape[0])

    def take(self, which: NDArray[np.intp] | NDArray[np.bool_]) -> PacketTuples:
        return PacketTuples(
            self.version[which], self.src_hi[which], self.src_lo[which], self.dst_hi[which],
            self.dst_lo[which], self.proto[which], self.sport[which], self.dport[which],
        )  # fmt: skip

    def flow_keys(self) -> FlowKeys:
        """The classifiers' input: one family's arrays, or both with `is_ipv6` when mixed."""
        v6 = self.version == 6
        n6 = int(np.count_nonzero(v6))
        src4 = self.src_lo.astype(np.uint32)
        dst4 = self.dst_lo.astype(np.uint32)
        if n6 == 0:
            return FlowKeys.ipv4(src4, dst4, self.proto, self.sport, self.dport)
        src6 = np.stack([self.src_hi, self.src_lo], axis=1)
        dst6 = np.stack([self.dst_hi, self.dst_lo], axis=1)
        if n6 == len(self):
            return FlowKeys.ipv6(src6, dst6, self.proto, self.sport, self.dport)
        return FlowKeys(self.proto, self.sport, self.dport, src4, dst4, src6, dst6, v6)

    def keys(self, seed: int) -> U64:
        """A seeded 64-bit key per tuple (direction matters: rules are not symmetric)."""
        s = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        src = mix64(mix64(self.src_hi ^ s) ^ self.src_lo)
        dst = mix64(mix64(self.dst_hi + src) ^ self.dst_lo)
        rest = (
            (self.version.astype(np.uint64) << np.uint64(40))
            | (self.proto.astype(np.uint64) << np.uint64(32))
            | (self.sport.astype(np.uint64) << np.uint64(16))
            | self.dport.astype(np.uint64)
        )
        return mix64(dst * _GOLDEN ^ rest)
