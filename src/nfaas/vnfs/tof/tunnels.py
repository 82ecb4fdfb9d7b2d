"""GTP-U tunnels the TOF has learned from S1-U traffic, one table per direction.

Seed 002 §4.3.2.1.1: a new tunnel is spotted whenever a TEID arrives for a UE that has none
(or another) yet; the TOF learns it from the traffic instead of from signalling. Here a
tunnel is keyed by the UE's IPv4 address (the inner source of uplink packets, the inner
destination of downlink ones) and holds what is needed to send into it: the TEID, the
outer source and destination addresses, the layer-2 header of the frame it was learned
from (MACs and VLAN tags, so tunnelled frames we send look like the peer's), the outer
TOS and, for 5G N3 traffic, the QFI of the PDU Session Container.

Tables are `FlowState`s: a tunnel idle (no packet learned from or sent into it) for longer
than the timeout counts as gone at once and is freed by the next `expire` sweep — the
seed's "auto-purge stale SGW/eNodeB tunnels after some configured idle time".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nfaas.nf.batch import PacketBatch
from nfaas.nf.gtpu import encapsulate
from nfaas.nf.headers import Headers
from nfaas.nf.state import FlowState

__all__ = ["MAX_L2", "TUNNEL_FIELDS", "Learned", "Tunnel", "TunnelTable"]

MAX_L2 = 22  # Ethernet + two VLAN tags: the most the parser accepts before IP

TUNNEL_FIELDS = np.dtype(
    [
        ("teid", np.uint32),
        ("src", np.uint32),  # outer source (uplink: eNodeB, downlink: SGW)
        ("dst", np.uint32),  # outer destination (uplink: SGW, downlink: eNodeB)
        ("l2", np.uint8, (MAX_L2,)),
        ("l2_len", np.uint8),
        ("tos", np.uint8),
        ("qfi", np.int16),  # -1: no PDU Session Container
        ("packets", np.uint64),
        ("bytes", np.uint64),
        ("since", np.float64),  # when this TEID was learned
        ("probed_at", np.float64),  # uplink only: last pinger probe sent into it
        ("probed", np.bool_),
    ]
)


def _ip(value: int) -> str:
    return str(ipaddress.IPv4Address(int(value)))


@dataclass(frozen=True)
class Tunnel:
    """One learned tunnel, for inspection (tests, a status page)."""

    direction: str
    ue: str
    teid: int
    src: str
    dst: str
    qfi: int | None
    packets: int
    bytes: int
    since: float
    last_seen: float


@dataclass(frozen=True)
class Learned:
    """What one `learn` call changed."""

    new: int  # tunnels for UEs that had none
    changed: int  # UEs whose TEID or endpoints changed (handover, new session)
    refused: int  # UEs not learned because the table is full


class TunnelTable:
    """UE IPv4 address -> tunnel, for one direction ("uplink" or "downlink")."""

    def __init__(self, direction: str, timeout: float, max_tunnels: int | None = None) -> None:
        self.direction = direction
        self.state = FlowState(TUNNEL_FIELDS, timeout=timeout, max_flows=max_tunnels)

    def __len__(self) -> int:
        return len(self.state)

    @property
    def records(self) -> NDArray[np.void]:
        return self.state.records

    def find(self, ue: NDArray[np.uint32], now: float) -> NDArray[np.int64]:
        """Row of each UE's live tunnel, -1 where none (or idle past the timeout)."""
        return self.state.find(ue.astype(np.uint64), now)

    def touch(self, rows: NDArray[np.int64], now: float) -> None:
        """Traffic was sent into these tunnels: they are not idle."""
        self.state.touch(rows, now)

    def encapsulate(
        self,
        packets: PacketBatch,
        rows: NDArray[np.int64],
        *,
        ttl: int,
        ident: ArrayLike,
        start: ArrayLike = 0,
        end: ArrayLike | None = None,
    ) -> PacketBatch:
        """Packet i (the IP packet at its bytes `start:end`) tunnelled into the tunnel at row
        `rows[i]`, framed as that tunnel's peer frames it (TEID, outer addresses, layer 2,
        TOS, QFI; the PDU type of this table's direction). The outer `ttl` and IPv4
        `ident` (per packet) are the sender's."""
        tunnel = self.state.records[rows]
        return encapsulate(
            packets,
            start=start,
            end=end,
            teid=tunnel["teid"],
            src=tunnel["src"],
            dst=tunnel["dst"],
            l2=tunnel["l2"],
            l2_length=tunnel["l2_len"],
            tos=tunnel["tos"],
            ttl=ttl,
            ident=ident,
            qfi=tunnel["qfi"],
            uplink=self.direction == "uplink",
        )

    def remove(self, ue: NDArray[np.uint32]) -> int:
        return int(np.count_nonzero(self.state.remove(ue.astype(np.uint64))))

    def learn(
        self,
        ue: NDArray[np.uint32],
        batch: PacketBatch,
        outer: Headers,
        rows: NDArray[np.intp],
        now: float,
    ) -> tuple[Learned, NDArray[np.int64]]:
        """Learn (or refresh) the tunnel of packets `rows` of `batch` (G-PDUs over outer
        IPv4, parsed into `outer`), whose UE addresses are `ue`; the last packet of a UE
        wins. Returns what changed and each packet's tunnel row (-1 if refused).
        """
        n = ue.shape[0]
        if n == 0:
            return Learned(0, 0, 0), np.zeros(0, np.int64)
        keys = ue.astype(np.uint64)
        # The last packet of each UE: unique over the reversed keys finds first occurrences.
        uniq, first_rev, inverse = np.unique(keys[::-1], return_index=True, return_inverse=True)
        last = rows[n - 1 - first_rev]
        inverse = inverse[::-1]
        slots, created = self.state.upsert_distinct(uniq, now)
        ok = slots >= 0
        rec = self.state.records
        teid, src, dst = outer.gtp_teid[last], outer.ipv4_src[last], outer.ipv4_dst[last]
        r = slots[ok]
        old = ~created[ok]
        changed = old & (
            (rec["teid"][r] != teid[ok]) | (rec["src"][r] != src[ok]) | (rec["dst"][r] != dst[ok])
        )
        fresh = r[~old | changed]
        if fresh.size:
            rec["since"][fresh] = now
            rec["probed"][fresh] = False
        rec["teid"][r] = teid[ok]
        rec["src"][r] = src[ok]
        rec["dst"][r] = dst[ok]
        lp = last[ok]
        starts = batch.offsets[lp]
        rec["l2"][r] = batch.data[starts[:, None] + np.arange(MAX_L2)]
        rec["l2_len"][r] = outer.l3_offset[lp]
        rec["tos"][r] = outer.ip_tos[lp]
        qfi = outer.gtp_qfi[lp].astype(np.int16)
        rec["qfi"][r] = np.where(outer.has_pdu_session[lp], qfi, -1)
        per_key_packets = np.bincount(inverse, minlength=uniq.size)
        per_key_bytes = np.bincount(inverse, weights=batch.lengths[rows], minlength=uniq.size)
        rec["packets"][r] += per_key_packets[ok].astype(np.uint64)
        rec["bytes"][r] += per_key_bytes[ok].astype(np.uint64)
        learned = Learned(
            new=int(np.count_nonzero(created[ok])),
            changed=int(np.count_nonzero(changed)),
            refused=int(np.count_nonzero(~ok)),
        )
        return learned, slots[inverse]

    def expire(self, now: float) -> int:
        """Free the tunnels idle past the timeout; returns how many."""
        keys, _ = self.state.expire(now)
        return int(keys.shape[0])

    def tunnels(self) -> list[Tunnel]:
        """Every held tunnel (including idle ones not yet swept)."""
        rows = self.state.rows()
        rec = self.state.records[rows]
        ues = self.state.keys_of(rows)
        seen = self.state.last_seen(rows)
        return [
            Tunnel(
                direction=self.direction,
                ue=_ip(int(ues[k])),
                teid=int(rec["teid"][k]),
                src=_ip(int(rec["src"][k])),
                dst=_ip(int(rec["dst"][k])),
                qfi=None if int(rec["qfi"][k]) < 0 else int(rec["qfi"][k]),
                packets=int(rec["packets"][k]),
                bytes=int(rec["bytes"][k]),
                since=float(rec["since"][k]),
                last_seen=float(seen[k]),
            )
            for k in range(rows.shape[0])
        ]
