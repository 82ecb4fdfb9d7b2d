"""AF_PACKET port: one interface, memory-mapped rings for receiving and sending, whole
batches at a time.

Receiving (`rx_ring`):

- "v3" (default): a TPACKET_V3 ring. The kernel packs frames into blocks and hands a block
  to us ("retires" it) when it is full or `block_timeout_ms` after its first frame. A
  `recv_batch` walks the frame headers of the retired blocks (one small Python step per
  frame: the headers form a chain), reads lengths, timestamps and VLAN tags of all frames
  with numpy, copies all frames into one `PacketBatch` at once and gives the blocks back.
  Frames are packed (no slot waste, GSO-sized frames fit), but under light load a frame
  waits for its block to retire: up to `block_timeout_ms` (1 ms at least) per port.
- "v2": a TPACKET_V2 ring of fixed-size frame slots (`frame_size`), each handed over as
  soon as it is filled; ready slots are found with one vectorised status check, no walk.
  No added latency; frames longer than a slot are cut (`wire_length` keeps their length).

Neither makes a system call per packet; `poll` is called only when nothing is ready.

The kernel moves the outer VLAN tag of received frames into the frame header; it is put
back into the bytes. Frames sent from a local socket over a veth usually carry a partial
checksum (checksum offload: the TCP/UDP field holds only the pseudo-header sum, status
TP_STATUS_CSUMNOTREADY); with `fix_checksums` (default) those are completed, so a batch
holds the bytes a wire would carry and can be forwarded as it is.

Sending (`tx_mode`): "sendmmsg" (default) hands the batch to `sendmmsg(2)` in one call
(the kernel copies each packet); "ring" copies the batch into free slots of an mmap TX ring
(TPACKET_V3 or V2, as the RX ring) and calls `send()` once, which sends every filled slot.
Both make one system call per batch. On veth links sendmmsg measured faster (docs/nf-ports.md):
the ring's zero-copy packets point into the ring's pages, which costs the kernel more than
copying a small frame, and the ring's slots must come back before they are reused.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from nfaas.nf.batch import PacketBatch, packed_offsets, ragged_copy
from nfaas.nf.build import fix_l4_checksums
from nfaas.nf.closing import Closing
from nfaas.nf.headers import parse
from nfaas.nf.ports import DEFAULT_BURST, PortError, PortStats, netns

__all__ = ["AfPacketPort", "get_offloads", "interface_info", "set_offloads"]

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
ETH_P_ALL = 0x0003

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1

SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933
SIOCETHTOOL = 0x8946

# struct tpacket_block_desc (V3): field offsets from the start of a block
BLOCK_STATUS, BLOCK_NUM_PKTS, BLOCK_FIRST_PKT = 8, 12, 16


def drain_queue(sock: socket.socket, limit: int = 65536) -> list[bytes]:
    """Frames waiting in a ring-less packet socket's queue (at most `limit`), oldest first."""
    frames: list[bytes] = []
    while len(frames) < limit:
        try:
            frames.append(sock.recv(65536, socket.MSG_DONTWAIT))
        except BlockingIOError:
            break
    return frames


@dataclass(frozen=True)
class FrameLayout:
    """Byte offsets of the fields of a frame header (struct tpacket2_hdr / tpacket3_hdr)."""

    version: int  # PACKET_VERSION value
    status: int
    len: int
    snaplen: int
    mac: int  # u16: offset of the frame data from the header
    sec: int
    nsec: int
    vlan_tci: int  # u16
    vlan_tpid: int  # u16
    tx_data: int  # where TX data starts: TPACKETx_HDRLEN - sizeof(struct sockaddr_ll)


V2 = FrameLayout(1, 0, 4, 8, 12, 16, 20, 24, 26, tx_data=32)
V3 = FrameLayout(2, 20, 16, 12, 24, 4, 8, 32, 36, tx_data=48)  # tp_next_offset at 0
ETH_HLEN = 14
VLAN_HLEN = 4
SEND_TIMEOUT_S = 1  # bound on a send() waiting for the kernel to give TX slots back
_PADDED_COPY_MAX = 256  # frames up to this long are copied into TX slots as one 2-D block

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_libc.sendmmsg.restype = ctypes.c_int


def _ifreq(name: str, tail: bytes = b"") -> bytearray:
    raw = name.encode()
    return bytearray(raw + bytes(16 - len(raw)) + tail + bytes(24 - len(tail)))


def interface_info(sock: socket.socket, name: str) -> tuple[int, int, bytes]:
    """(ifindex, MTU, MAC address) of interface `name` in the socket's network namespace."""
    req = _ifreq(name)
    fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, req)
    index = struct.unpack_from("i", req, 16)[0]
    req = _ifreq(name)
    fcntl.ioctl(sock.fileno(), SIOCGIFMTU, req)
    mtu = struct.unpack_from("i", req, 16)[0]
    req = _ifreq(name)
    fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, req)
    return index, mtu, bytes(req[18:24])


# -- offloads (what `ethtool -K` sets) ------------------------------------------------------

# feature -> (ETHTOOL_G* command, ETHTOOL_S* command) of the legacy ethtool ioctl
OFFLOADS = {
    "tx_checksum": (0x16, 0x17),
    "sg": (0x18, 0x19),
    "tso": (0x1E, 0x1F),
    "gso": (0x23, 0x24),
    "gro": (0x2B, 0x2C),
}


def _ethtool(name: str, cmd: int, value: int, where: str | None) -> int:
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, value), 8)
    req = _ifreq(name, struct.pack("P", ctypes.addressof(buf)))
    with netns(where), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, req)
        except OSError as e:
            raise PortError(e.errno, f"ethtool command 0x{cmd:x} on {name!r}: {e}") from e
    return int(struct.unpack("II", buf.raw)[1])


def get_offloads(name: str, netns_name: str | None = None) -> dict[str, bool]:
    """Offload settings of an interface (tx_checksum, sg, tso, gso, gro)."""
    return {k: bool(_ethtool(name, get, 0, netns_name)) for k, (get, _) in OFFLOADS.items()}


def set_offloads(name: str, netns_name: str | None = None, **features: bool) -> None:
    """Switch offloads on or off, like `ethtool -K`: e.g. `set_offloads("v0", tso=False)`.

    With TSO/GSO on, a local TCP sender hands a veth frames of up to 64 KiB that a port
    cannot send on (they exceed the MTU); turn them off on the sending side of such links.
    """
    for feature, on in features.items():
        if feature not in OFFLOADS:
            raise ValueError(f"unknown offload {feature!r} (known: {', '.join(OFFLOADS)})")
        _ethtool(name, OFFLOADS[feature][1], int(on), netns_name)


# -- the port -------------------------------------------------------------------------------


class AfPacketPort(Closing):
    """A port on one network interface through an AF_PACKET socket with mmap rings.

    Args:
        ifname: the interface (a veth end, a NIC).
        netns: `ip netns` name (or path) of the namespace the interface is in.
        promiscuous: receive frames for every MAC address (an NF forwards other hosts').
        ignore_outgoing: do not receive what is sent on the interface (by us or the host).
        qdisc_bypass: send straight to the driver, skipping the queueing discipline.
        rx_ring: "v3" (block ring: throughput) or "v2" (frame ring: latency).
        tx_mode: "sendmmsg" (one sendmmsg() per batch) or "ring" (mmap TX ring + one
            send() per batch).
        block_size, block_count: RX ring geometry; block_size is a multiple of the page
            size, and (v3) bounds the largest frame received whole, GSO frames included.
        frame_size: v2 RX slot size (header included); longer frames are cut.
        block_timeout_ms: v3 hands over a partly filled block after this long.
        tx_frames: TX ring slots.
        fanout_group: join this PACKET_FANOUT group (flow-hash spreading over the sockets of
            several NF instances on one interface).
        fix_checksums: complete partial TCP/UDP checksums of received frames.
        port_id: the value of `batch.port` for received packets.
        sock: an AF_PACKET socket someone with CAP_NET_RAW opened for us (an NF instance
            gets its ports from the node this way, see `nfaas.nf.ports.claim`). Frames it
            queued before the rings exist are kept and come first.
    """

    def __init__(
        self,
        ifname: str,
        *,
        netns: str | None = None,
        promiscuous: bool = True,
        ignore_outgoing: bool = True,
        qdisc_bypass: bool = False,
        rx_ring: str = "v3",
        tx_mode: str = "sendmmsg",
        block_size: int = 1 << 18,
        block_count: int = 32,
        frame_size: int = 2048,
        block_timeout_ms: int = 1,
        tx_frames: int = 1024,
        fanout_group: int | None = None,
        fix_checksums: bool = True,
        port_id: int = 0,
        url: str = "",
        sock: socket.socket | None = None,
    ) -> None:
        if rx_ring not in ("v2", "v3"):
            raise ValueError(f"rx_ring must be 'v2' or 'v3', not {rx_ring!r}")
        if tx_mode not in ("ring", "sendmmsg"):
            raise ValueError(f"tx_mode must be 'ring' or 'sendmmsg', not {tx_mode!r}")
        if block_size % mmap.PAGESIZE or frame_size % 16 or block_size % frame_size:
            raise ValueError(
                f"block_size {block_size} must be a multiple of the page size "
                f"({mmap.PAGESIZE}) and of frame_size {frame_size} (a multiple of 16)"
            )
        self.ifname = ifname
        self.netns = netns
        self.url = url or f"afpacket:{ifname}"
        self.rx_ring = rx_ring
        self.tx_mode = tx_mode
        self.layout = V3 if rx_ring == "v3" else V2
        self.port_id = port_id
        self.fix_checksums = fix_checksums
        self._counters = PortStats()
        self._kernel_drops = 0
        self._backlog: list[bytes] = []
        try:
            self._open_socket(ifname, sock)
            self._setup_rings(block_size, block_count, frame_size, block_timeout_ms, tx_frames)
            self._bind(promiscuous, ignore_outgoing, qdisc_bypass, fanout_group)
        except BaseException:
            self.close()
            raise

    # -- setup --------------------------------------------------------------------------

    def _open_socket(self, ifname: str, given: socket.socket | None) -> None:
        if given is not None:
            self._sock = given
            # Setting up the RX ring purges what the socket has queued: take it first.
            self._backlog = drain_queue(given)
        else:
            # Protocol 0 receives nothing until bind(): no frames of other interfaces sneak in.
            with netns(self.netns):
                self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.ifindex, self.mtu, self.mac = interface_info(self._sock, ifname)
        except OSError as e:
            where = f"network namespace {self.netns!r}" if self.netns else "this namespace"
            raise PortError(
                e.errno, f"{self.url}: no interface {ifname!r} in {where} ({e.strerror})"
            ) from e
        # Longest frame the kernel takes from us: MTU + Ethernet header + one VLAN tag.
        self.max_frame = self.mtu + ETH_HLEN + VLAN_HLEN

    def _setup_rings(
        self, block_size: int, blocks: int, frame_size: int, timeout_ms: int, tx_frames: int
    ) -> None:
        s = self._sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, self.layout.version)
        s.setsockopt(SOL_PACKET, PACKET_LOSS, 1)  # skip (not stall on) frames it rejects
        frames = block_size // frame_size * blocks
        v3_timeout = timeout_ms if self.rx_ring == "v3" else 0
        rx_req = struct.pack("7I", block_size, blocks, frame_size, frames, v3_timeout, 0, 0)
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, rx_req if self.rx_ring == "v3" else rx_req[:16])
        self._block_size = block_size
        self._blocks = blocks
        self._frame_size = frame_size
        self._frames = frames
        rx_bytes = block_size * blocks
        tx_bytes = 0
        if self.tx_mode == "ring":
            slot = 1 << (self.layout.tx_data + self.max_frame - 1).bit_length()
            tx_block = max(mmap.PAGESIZE, slot)
            per_block = tx_block // slot
            tx_blocks = -(-tx_frames // per_block)
            tx_req = struct.pack("7I", tx_block, tx_blocks, slot, tx_blocks * per_block, 0, 0, 0)
            s.setsockopt(
                SOL_PACKET, PACKET_TX_RING, tx_req if self.rx_ring == "v3" else tx_req[:16]
            )
            self._tx_slot = slot
            self._tx_slots = tx_blocks * per_block
            tx_bytes = tx_block * tx_blocks
        self._mm = mmap.mmap(s.fileno(), rx_bytes + tx_bytes)
        self._ring = np.frombuffer(self._mm, np.uint8)
        self._ring16 = self._ring.view(np.uint16)
        self._ring32 = self._ring.view(np.uint32)
        self._words = memoryview(self._mm).cast("I")  # fast scalar reads
        # v2: one row per RX slot; TX: one row per TX slot (the TX ring follows the RX ring)
        self._rx32 = self._ring32[: rx_bytes // 4].reshape(frames, frame_size // 4)
        if self.tx_mode == "ring":
            tx = self._ring[rx_bytes:]
            self._tx8 = tx.reshape(self._tx_slots, self._tx_slot)
            self._tx32 = tx.view(np.uint32).reshape(self._tx_slots, self._tx_slot // 4)
        self._tx_head = 0
        self._rx_head = 0  # v3: oldest block not given back; v2: next slot to read
        self._rx_next = 0  # v3: ring offset of the next unread frame in that block
        self._rx_left = 0  # v3: frames not yet read in that block (0: block not started)
        self._poll = select.poll()
        self._poll.register(s.fileno(), select.POLLIN)

    def _bind(
        self, promiscuous: bool, ignore_outgoing: bool, qdisc_bypass: bool, fanout: int | None
    ) -> None:
        s = self._sock
        if ignore_outgoing:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        if qdisc_bypass:
            s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_TIMEOUT_S, 0))
        s.bind((self.ifname, ETH_P_ALL))
        if promiscuous:
            mreq = struct.pack("iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b"")
            s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        if fanout is not None:
            if not 0 <= fanout <= 0xFFFF:
                raise ValueError(f"fanout group must be 0..65535, not {fanout}")
            mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
            s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", fanout | (mode << 16)))

    # -- receiving ----------------------------------------------------------------------

    def _rx_ready(self) -> bool:
        if self.rx_ring == "v3":
            at = self._rx_head * self._block_size + BLOCK_STATUS
        else:
            at = self._rx_head * self._frame_size + V2.status
        return bool(self._words[at >> 2] & TP_STATUS_USER)

    def _wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._rx_ready():
            wait_ms = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait_ms = max(1, int(left * 1000 + 0.999))
            for _fd, events in self._poll.poll(wait_ms):
                if events & select.POLLERR:  # e.g. ENETDOWN: clear it, keep waiting
                    self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return True

    def recv_batch(
        self, max_packets: int = DEFAULT_BURST, timeout: float | None = 0.0
    ) -> PacketBatch:
        """Received frames (at most `max_packets`); waits up to `timeout` s for the first
        (None: forever, 0: not at all). Empty batch on timeout."""
        if self._backlog:
            return self._take_backlog(max_packets)
        if not self._rx_ready() and (timeout == 0 or not self._wait(timeout)):
            return PacketBatch.empty()
        if self.rx_ring == "v2":
            return self._recv_v2(max_packets)
        starts: list[int] = []
        done: list[int] = []
        # At most one lap: blocks are given back only after the copy, so with the whole ring
        # ready the head would come round to a block already read.
        while len(starts) < max_packets and len(done) < self._blocks and self._rx_ready():
            if self._walk_block(starts, max_packets - len(starts)):
                done.append(self._rx_head)
                self._rx_head = (self._rx_head + 1) % self._blocks
        batch = self._gather(np.asarray(starts, np.int64))
        for block in done:  # after the copy: the kernel may refill these at once
            self._words[(block * self._block_size + BLOCK_STATUS) >> 2] = TP_STATUS_KERNEL
        return batch

    def _take_backlog(self, max_packets: int) -> PacketBatch:
        frames, self._backlog = self._backlog[:max_packets], self._backlog[max_packets:]
        stamps = np.full(len(frames), time.time_ns(), np.int64)
        batch = PacketBatch.from_bytes(frames, stamps, self.port_id)
        self._counters.rx_packets += len(batch)
        self._counters.rx_bytes += batch.total_bytes
        return batch

    def _walk_block(self, starts: list[int], want: int) -> bool:
        """Append the ring offsets of up to `want` frames of the current V3 block; True
        when the block is used up (the caller gives it back after copying)."""
        words = self._words
        if self._rx_left == 0:
            base = self._rx_head * self._block_size
            self._rx_left = words[(base + BLOCK_NUM_PKTS) >> 2]
            self._rx_next = base + words[(base + BLOCK_FIRST_PKT) >> 2]
        take = min(self._rx_left, want)
        at = self._rx_next
        append = starts.append
        for _ in range(take):
            append(at)
            at += words[at >> 2]  # tp_next_offset
        self._rx_next = at
        self._rx_left -= take
        return self._rx_left == 0

    def _recv_v2(self, max_packets: int) -> PacketBatch:
        slots = (self._rx_head + np.arange(min(max_packets, self._frames))) % self._frames
        waiting = np.flatnonzero((self._rx32[slots, V2.status // 4] & TP_STATUS_USER) == 0)
        slots = slots[: waiting[0]] if waiting.size else slots
        batch = self._gather(slots * self._frame_size)
        self._rx32[slots, V2.status // 4] = TP_STATUS_KERNEL  # after the copy
        self._rx_head = (self._rx_head + slots.size) % self._frames
        return batch

    def _gather(self, frame: NDArray[np.int64]) -> PacketBatch:
        """One batch holding copies of the frames whose headers start at ring offsets
        `frame`, with their VLAN tags put back and partial checksums completed."""
        w32, w16, lay = self._ring32, self._ring16, self.layout
        snap = w32[(frame + lay.snaplen) >> 2].astype(np.int64)
        wire = w32[(frame + lay.len) >> 2].astype(np.int64)
        status = w32[(frame + lay.status) >> 2]
        src = frame + w16[(frame + lay.mac) >> 1]
        stamp = w32[(frame + lay.sec) >> 2].astype(np.int64) * 1_000_000_000
        stamp += w32[(frame + lay.nsec) >> 2]
        vlan = (status & TP_STATUS_VLAN_VALID) != 0
        extra = np.where(vlan, VLAN_HLEN, 0)
        lengths = snap + extra
        offsets = packed_offsets(lengths)
        data = np.empty(int(lengths.sum()), np.uint8)
        head = np.where(vlan, np.minimum(snap, 12), snap)  # MAC addresses, then the tag
        ragged_copy(data, offsets, self._ring, src, head)
        if vlan.any():
            rows = np.flatnonzero(vlan)
            f = frame[rows]
            has_tpid = (status[rows] & TP_STATUS_VLAN_TPID_VALID) != 0
            tpid = np.where(has_tpid, w16[(f + lay.vlan_tpid) >> 1], 0x8100).astype(np.uint32)
            tag = ((tpid << 16) | w16[(f + lay.vlan_tci) >> 1]).astype(">u4").view(np.uint8)
            data[(offsets[rows] + 12)[:, None] + np.arange(VLAN_HLEN)] = tag.reshape(-1, 4)
            ragged_copy(
                data, offsets[rows] + 16, self._ring, src[rows] + 12, snap[rows] - head[rows]
            )
        batch = PacketBatch(
            data, offsets, lengths, stamp, self.port_id, {"wire_length": wire + extra}
        )
        partial = (status & TP_STATUS_CSUMNOTREADY) != 0
        if self.fix_checksums and partial.any():
            sub = batch.select(np.flatnonzero(partial), copy=False)  # writes land in `data`
            fix_l4_checksums(sub, parse(sub))
        self._counters.rx_packets += len(batch)
        self._counters.rx_bytes += int(lengths.sum())
        return batch

    # -- sending ------------------------------------------------------------------------

    def send_batch(self, batch: PacketBatch) -> int:
        """Send the packets of `batch`; returns how many the kernel took. Frames shorter
        than an Ethernet header or longer than MTU + 18 are dropped (counted)."""
        n = len(batch)
        if n == 0:
            return 0
        lengths = batch.lengths
        fits = (lengths >= ETH_HLEN) & (lengths <= self.max_frame)
        rows = np.arange(n) if fits.all() else np.flatnonzero(fits)
        self._counters.tx_dropped += n - rows.size
        if self.tx_mode == "ring":
            sent = self._send_ring(batch, rows)
        else:
            sent = self._send_mmsg(batch, rows)
        self._counters.tx_packets += sent
        self._counters.tx_bytes += int(lengths[rows[:sent]].sum(dtype=np.int64))
        return sent

    def _free_slots(self, want: int) -> int:
        """How many TX slots from the head on are free (up to `want`)."""
        slots = (self._tx_head + np.arange(min(want, self._tx_slots))) % self._tx_slots
        busy = np.flatnonzero(self._tx32[slots, self.layout.status // 4] != TP_STATUS_AVAILABLE)
        return int(busy[0]) if busy.size else int(slots.size)

    def _send_ring(self, batch: PacketBatch, rows: NDArray[np.intp]) -> int:
        lay = self.layout
        sent = 0
        while sent < rows.size:
            k = self._free_slots(rows.size - sent)
            if k == 0:
                self._kick(wait=True)  # waits for the kernel to finish what is queued
                k = self._free_slots(rows.size - sent)
                if k == 0:
                    break  # the kernel holds every slot: the rest is not sent
            picked = rows[sent : sent + k]
            slots = (self._tx_head + np.arange(k)) % self._tx_slots
            lengths = batch.lengths[picked]
            self._copy_to_slots(slots, batch, picked, lengths)
            self._tx32[slots, lay.len // 4] = lengths
            self._tx32[slots, lay.snaplen // 4] = lengths
            if lay is V3:
                self._tx32[slots, 0] = 0  # tp_next_offset: V3 TX takes fixed-size slots only
            # the status words last: from here on the kernel may take the frames
            self._tx32[slots, lay.status // 4] = TP_STATUS_SEND_REQUEST
            self._tx_head = (self._tx_head + k) % self._tx_slots
            sent += k
            self._kick()
        return sent

    def _copy_to_slots(
        self,
        slots: NDArray[np.int64],
        batch: PacketBatch,
        picked: NDArray[np.intp],
        lengths: NDArray[np.int32],
    ) -> None:
        widest = int(lengths.max())
        offsets = batch.offsets[picked]
        start = self.layout.tx_data
        if widest <= _PADDED_COPY_MAX:
            # Small frames: one 2-D gather of `widest` bytes per frame beats a ragged copy;
            # bytes past a frame's end land in its slot but are not sent (tp_len says so).
            index = offsets[:, None] + np.arange(widest)
            np.minimum(index, batch.data.size - 1, out=index)
            self._tx8[slots, start : start + widest] = batch.data[index]
            return
        base = self._block_size * self._blocks
        ragged_copy(self._ring, base + slots * self._tx_slot + start, batch.data, offsets, lengths)

    def _kick(self, wait: bool = False) -> None:
        """One send(): the kernel sends every filled slot (with `wait`, it also waits for
        the slots to come free, up to SEND_TIMEOUT_S)."""
        flags = 0 if wait else socket.MSG_DONTWAIT
        for _ in range(8):
            try:
                self._sock.send(b"", flags)
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the driver dropped one frame; go on
                    self._counters.tx_dropped += 1
                    continue
                if e.errno in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
                    return  # still in flight: those slots are reused once the kernel is done
                raise PortError(e.errno, f"{self.url}: send: {e.strerror}") from e

    def _send_mmsg(self, batch: PacketBatch, rows: NDArray[np.intp]) -> int:
        data = np.ascontiguousarray(batch.data)
        n = rows.size
        iov = np.empty((n, 2), np.uint64)  # struct iovec {base, len}
        iov[:, 0] = data.ctypes.data + batch.offsets[rows].astype(np.uint64)
        iov[:, 1] = batch.lengths[rows]
        msgs = np.zeros((n, 8), np.uint64)  # struct mmsghdr, 64 bytes on 64-bit Linux
        msgs[:, 2] = iov.ctypes.data + 16 * np.arange(n, dtype=np.uint64)  # msg_iov
        msgs[:, 3] = 1  # msg_iovlen
        sent = 0
        while sent < n:
            got = _libc.sendmmsg(self._sock.fileno(), msgs.ctypes.data + 64 * sent, n - sent, 0)
            if got < 0:
                err = ctypes.get_errno()
                if err == errno.ENOBUFS:  # the driver dropped this one; go on with the rest
                    self._counters.tx_dropped += 1
                    sent += 1
                    continue
                if err in (errno.EAGAIN, errno.EINTR):
                    break
                raise PortError(err, f"{self.url}: sendmmsg: {os.strerror(err)}")
            sent += got
        return sent

    # -- the rest of the Port protocol --------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    def stats(self) -> PortStats:
        """Counters; `rx_dropped` are the kernel's drops (ring full) from PACKET_STATISTICS."""
        size = 12 if self.rx_ring == "v3" else 8
        drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, size)[:8])[
            1
        ]
        self._kernel_drops += drops  # reading the kernel's counters resets them
        return replace(self._counters, rx_dropped=self._kernel_drops)

    def close(self) -> None:
        """Unmap the rings and close the socket (safe to call twice, or half-built)."""
        state = vars(self)
        if "_words" in state:
            state.pop("_words").release()
        for view in ("_ring", "_ring16", "_ring32", "_rx32", "_tx8", "_tx32"):
            state.pop(view, None)  # the mapping cannot close while arrays point into it
        if "_mm" in state:
            state.pop("_mm").close()
        if "_sock" in state:
            self._sock.close()

    def __repr__(self) -> str:
        where = f" in {self.netns}" if self.netns else ""
        return f"AfPacketPort({self.ifname!r}{where}, rx={self.rx_ring}, tx={self.tx_mode})"
