"""TAP port: a virtual Ethernet interface whose "wire" is a file descriptor of this process.

Opening a `TapPort` creates the device through /dev/net/tun (IFF_TAP | IFF_NO_PI, and
IFF_MULTI_QUEUE when asked: every TapPort opened on a multi-queue device is one more queue),
in the network namespace given, and brings it up; it can be given an address and MTU, and
moved to another namespace. Frames the host sends out of the interface are read from the
descriptor; frames written to it arrive at the host as if received on the interface.

A tap descriptor moves one frame per read() or write(): `recv_batch` reads (non-blocking,
straight into one buffer, no per-packet allocation) until the queue is empty or the batch is
full; `send_batch` writes one frame at a time. There is no batching system call for a tap
file descriptor: vhost-net does that work in the kernel for VMs, IFF_NAPI (option `napi`)
only changes how the kernel takes written frames in, not the number of system calls.

The device is deleted when its last queue is closed, unless it was made persistent; then
`delete()` removes it.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import select
import socket
import struct
import time
from dataclasses import replace

import numpy as np

from nfaas.nf.batch import PacketBatch, packed_offsets
from nfaas.nf.closing import Closing
from nfaas.nf.ports import DEFAULT_BURST, PortError, PortStats, netns_path
from nfaas.nf.ports import netns as in_netns

__all__ = ["TapPort"]

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NAPI = 0x0010
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_UP = 0x1
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927

# rtnetlink
RTM_NEWLINK, RTM_NEWADDR = 16, 20
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
IFLA_MTU, IFLA_NET_NS_FD = 4, 28
IFA_ADDRESS, IFA_LOCAL = 1, 2

ETH_HLEN, VLAN_HLEN = 14, 4


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("HH", 4 + len(value), kind) + value + bytes(-len(value) % 4)


def _rtnetlink(kind: int, flags: int, body: bytes, where: str | None, what: str) -> None:
    """Send one rtnetlink request in namespace `where` and raise if the kernel refuses it."""
    with in_netns(where), socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as nl:
        header = struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, 1, 0)
        nl.send(header + body)
        reply = nl.recv(65536)
    if struct.unpack_from("H", reply, 4)[0] == NLMSG_ERROR:
        err = -struct.unpack_from("i", reply, 16)[0]
        if err:
            raise PortError(err, f"{what}: {os.strerror(err)}")


class TapPort(Closing):
    """A TAP device, created on open and read and written as a port.

    Args:
        name: interface name (at most 15 bytes; "tap%d" lets the kernel pick a number).
        netns: `ip netns` name (or path) of the namespace to create the device in.
        address: an address with prefix length for the interface, e.g. "198.18.5.1/24".
        up: bring the interface up.
        multi_queue: IFF_MULTI_QUEUE; opening the same name again adds a queue.
        napi: IFF_NAPI (written frames enter the stack through NAPI/GRO).
        persist: keep the device after close (remove it with `delete()`).
        mtu: set the interface MTU.
        port_id: the value of `batch.port` for received packets.
    """

    def __init__(
        self,
        name: str,
        *,
        netns: str | None = None,
        address: str | None = None,
        up: bool = True,
        multi_queue: bool = False,
        napi: bool = False,
        persist: bool = False,
        mtu: int | None = None,
        port_id: int = 0,
        url: str = "",
    ) -> None:
        self.url = url or f"tap:{name}"
        self.netns = netns
        self.port_id = port_id
        self._counters = PortStats()
        flags = IFF_TAP | IFF_NO_PI
        flags |= (IFF_MULTI_QUEUE if multi_queue else 0) | (IFF_NAPI if napi else 0)
        with in_netns(netns):
            self._fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            req = bytearray(struct.pack("16sH22x", name.encode(), flags))
            try:
                fcntl.ioctl(self._fd, TUNSETIFF, req)
            except OSError as e:
                hint = " (exists and is not a multi-queue tap?)" if e.errno == errno.EBUSY else ""
                raise PortError(
                    e.errno, f"{self.url}: cannot create tap {name!r}: {e}{hint}"
                ) from e
            self.name = bytes(req[:16]).rstrip(b"\0").decode()
            if persist:
                fcntl.ioctl(self._fd, TUNSETPERSIST, 1)
            self._set_link(up=up, mtu=mtu)
            if address:
                self.add_address(address)
            self._refresh_link_info()
            self._dropped_base = self._kernel_tx_dropped()
        except BaseException:
            os.close(self._fd)
            raise
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._scratch = np.empty(0, np.uint8)

    @classmethod
    def adopt(cls, fd: int, name: str, mtu: int, *, url: str = "", port_id: int = 0) -> TapPort:
        """A port on a TAP queue someone else created and configured (the node, for an NF
        instance that may not touch links itself); the device's counters are not read."""
        port = cls.__new__(cls)
        port.url = url or f"tap:{name}"
        port.netns = None
        port.port_id = port_id
        port._counters = PortStats()
        port._fd = fd
        os.set_blocking(fd, False)
        port.name = name
        port.mtu = mtu
        port._frame_max = mtu + ETH_HLEN + VLAN_HLEN
        port._dropped_base = -1  # -1: not ours to read
        port._poll = select.poll()
        port._poll.register(fd, select.POLLIN)
        port._scratch = np.empty(0, np.uint8)
        return port

    def detach(self) -> int:
        """Give up the queue's file descriptor without closing it (for handing it over)."""
        fd, self._fd = self._fd, -1
        return fd

    # -- configuration ------------------------------------------------------------------

    def _ifindex(self) -> int:
        with in_netns(self.netns):
            return socket.if_nametoindex(self.name)

    def _refresh_link_info(self) -> None:
        with in_netns(self.netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = bytearray(struct.pack("16s24x", self.name.encode()))
            fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
            self.mac = bytes(req[18:24])
            self.ifindex = socket.if_nametoindex(self.name)
        self.mtu = self._read_mtu()
        self._frame_max = self.mtu + ETH_HLEN + VLAN_HLEN

    def _read_mtu(self) -> int:
        with in_netns(self.netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = bytearray(struct.pack("16s24x", self.name.encode()))
            fcntl.ioctl(s.fileno(), SIOCGIFMTU, req)
            return int(struct.unpack_from("i", req, 16)[0])

    def _set_link(
        self, up: bool | None = None, mtu: int | None = None, move_fd: int | None = None
    ) -> None:
        attrs = b""
        if mtu is not None:
            attrs += _attr(IFLA_MTU, struct.pack("I", mtu))
        if move_fd is not None:
            attrs += _attr(IFLA_NET_NS_FD, struct.pack("I", move_fd))
        flags = IFF_UP if up else 0
        change = IFF_UP if up is not None else 0
        body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, self._ifindex(), flags, change)
        _rtnetlink(RTM_NEWLINK, 0, body + attrs, self.netns, f"{self.url}: configure link")

    def set_up(self, up: bool = True) -> None:
        self._set_link(up=up)

    def set_mtu(self, mtu: int) -> None:
        self._set_link(mtu=mtu)
        self._refresh_link_info()

    def add_address(self, address: str) -> None:
        """Add an IPv4 or IPv6 address with prefix length ("198.18.5.1/24")."""
        try:
            iface = ipaddress.ip_interface(address)
        except ValueError as e:
            raise PortError(22, f"{self.url}: bad address {address!r}: {e}") from None
        family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        raw = iface.ip.packed
        body = struct.pack("BBBBI", family, iface.network.prefixlen, 0, 0, self._ifindex())
        body += _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
        flags = NLM_F_CREATE | NLM_F_EXCL
        _rtnetlink(RTM_NEWADDR, flags, body, self.netns, f"{self.url}: add address {address}")

    def move_to(self, target: str, *, up: bool = True, address: str | None = None) -> None:
        """Move the device into network namespace `target` (this port keeps working);
        the move takes it down, so it is brought up again there unless `up` is False."""
        try:
            fd = os.open(netns_path(target), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PortError(2, f"{self.url}: network namespace {target!r} not found") from None
        try:
            self._set_link(move_fd=fd)
        finally:
            os.close(fd)
        self.netns = target
        if up:
            self._set_link(up=True)
        if address:
            self.add_address(address)
        self._refresh_link_info()
        self._dropped_base = self._kernel_tx_dropped()

    def _kernel_tx_dropped(self) -> int:
        """Frames the host sent to the device that were dropped because our queue was full."""
        with in_netns(self.netns), open("/proc/thread-self/net/dev") as f:
            for line in f:
                name, sep, fields = line.partition(":")
                if sep and name.strip() == self.name:
                    return int(fields.split()[11])
        return 0

    # -- the Port protocol --------------------------------------------------------------

    def recv_batch(
        self, max_packets: int = DEFAULT_BURST, timeout: float | None = 0.0
    ) -> PacketBatch:
        """Frames waiting on the device (at most `max_packets`); waits up to `timeout` s for
        the first (None: forever, 0: not at all). Empty batch on timeout."""
        frame_max = self._frame_max
        if self._scratch.size < max_packets * frame_max:
            self._scratch = np.empty(max_packets * frame_max, np.uint8)
        view = memoryview(self._scratch)  # type: ignore[arg-type]
        deadline = None if timeout is None else time.monotonic() + timeout
        lengths: list[int] = []
        stamps: list[int] = []
        pos = 0
        while len(lengths) < max_packets:
            try:
                n = os.readv(self._fd, [view[pos : pos + frame_max]])
            except BlockingIOError:
                if lengths or not self._wait(deadline):
                    break
                continue
            n = min(n, frame_max)  # a frame longer than the MTU we know is cut
            lengths.append(n)
            stamps.append(time.time_ns())
            pos += n
        view.release()
        if not lengths:
            return PacketBatch.empty()
        batch = PacketBatch(
            self._scratch[:pos].copy(), packed_offsets(lengths), lengths, stamps, self.port_id
        )
        self._counters.rx_packets += len(lengths)
        self._counters.rx_bytes += pos
        return batch

    def _wait(self, deadline: float | None) -> bool:
        if deadline is None:
            self._poll.poll()
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self._poll.poll(max(1, int(left * 1000 + 0.999)))
        return True

    def send_batch(self, batch: PacketBatch) -> int:
        """Write each frame to the device; returns how many the kernel took."""
        data = memoryview(np.ascontiguousarray(batch.data))  # type: ignore[arg-type]
        sent = sent_bytes = 0
        for start, length in zip(batch.offsets.tolist(), batch.lengths.tolist(), strict=True):
            if not ETH_HLEN <= length <= self._frame_max:
                self._counters.tx_dropped += 1
                continue
            try:
                os.write(self._fd, data[start : start + length])
            except OSError:  # e.g. EIO while the device is down
                self._counters.tx_dropped += 1
                continue
            sent += 1
            sent_bytes += length
        self._counters.tx_packets += sent
        self._counters.tx_bytes += sent_bytes
        return sent

    def fileno(self) -> int:
        return self._fd

    def stats(self) -> PortStats:
        """Counters; `rx_dropped` is the device's tx_dropped (frames we were too slow for)."""
        if self._dropped_base < 0:
            return replace(self._counters)
        dropped = self._kernel_tx_dropped() - self._dropped_base
        return replace(self._counters, rx_dropped=dropped)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def delete(self) -> None:
        """Make the device non-persistent and close it, which removes it."""
        if self._fd >= 0:
            fcntl.ioctl(self._fd, TUNSETPERSIST, 0)
        self.close()

    def __repr__(self) -> str:
        where = f" in {self.netns}" if self.netns else ""
        return f"TapPort({self.name!r}{where})"
