"""Ports: where packet batches enter and leave an NF (capture files, AF_PACKET, TAP).

Every port moves whole batches: `recv_batch(max_packets, timeout)` returns a `PacketBatch`
(empty when nothing arrived in time) and `send_batch(batch)` returns how many packets it
accepted. `fileno()` gives an event loop something to poll, `stats()` the packet and byte
counters with the drops the kernel reports, and `close()` releases the port.

`open_port(url)` opens a port from its spec, the form NF manifests use::

    afpacket:veth0?netns=mid&qdisc_bypass=1    AF_PACKET socket with mmap rings (afpacket.py)
    tap:nfaas-tap0?address=198.18.5.1/24       TAP device via /dev/net/tun (tap.py)
    pcap:/path/in.pcap   pcapng:/path/in.pcapng   read a capture (either format is detected)
    pcap-out:/path/out.pcap   pcapng-out:/path/out.pcapng   write a capture

`netns(name)` runs a block inside a named network namespace (`ip netns` names); sockets and
TAP devices opened there stay in that namespace after the block ends.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import numpy as np

from nfaas.core.porturl import PortSpecError, parse_port_url
from nfaas.nf.batch import PacketBatch
from nfaas.nf.closing import Closing
from nfaas.nf.pcap import PcapngReader, PcapngWriter, PcapReader, PcapWriter, open_capture

__all__ = [
    "DEFAULT_BURST",
    "CaptureInPort",
    "CaptureOutPort",
    "Port",
    "PortError",
    "PortSpecError",
    "PortStats",
    "netns",
    "netns_path",
    "open_port",
    "parse_port_url",
]

DEFAULT_BURST = 256
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


class PortError(OSError):
    """A port could not be opened or used; the message names the port."""


@dataclass
class PortStats:
    """Counters of one port since it was opened.

    `rx_dropped` is what the kernel reports it could not hand to us (AF_PACKET: ring full,
    from PACKET_STATISTICS; TAP: the device's tx_dropped); `tx_dropped` counts packets the
    port refused (too long or too short for the link) or the kernel rejected.
    """

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0


@runtime_checkable
class Port(Protocol):
    """What an NF graph needs from a port."""

    url: str

    def recv_batch(
        self, max_packets: int = DEFAULT_BURST, timeout: float | None = 0.0
    ) -> PacketBatch:
        """Up to `max_packets` packets; waits up to `timeout` s for the first (None: forever)."""
        ...

    def send_batch(self, batch: PacketBatch) -> int:
        """Queue the packets of `batch` for sending; returns how many were accepted."""
        ...

    def fileno(self) -> int: ...

    def stats(self) -> PortStats: ...

    def close(self) -> None: ...


# -- network namespaces ---------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise PortError(err, f"setns into network namespace {what}: {os.strerror(err)}")


def netns_path(name: str) -> str:
    """The file naming a network namespace: an `ip netns` name or an absolute path."""
    return name if name.startswith("/") else os.path.join(NETNS_DIR, name)


@contextmanager
def netns(name: str | None) -> Iterator[None]:
    """Run the block with this thread in network namespace `name` (None: stay where we are)."""
    if not name:
        yield
        return
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PortError(
            2, f"network namespace {name!r} not found ({netns_path(name)} does not exist)"
        ) from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, repr(name))
            try:
                yield
            finally:
                _setns(home, "of this thread (going back)")
        finally:
            os.close(home)
    finally:
        os.close(target)


# -- capture files as ports -----------------------------------------------------------------


class _CapturePort(Closing):
    """A capture file opened as a port: its path, URL, file and packet counters."""

    def __init__(self, path: str | Path | int, url: str, mode: str, failure: str) -> None:
        """`path` may be an open file descriptor (handed over by the node), which we own."""
        self.path = Path(f"/proc/self/fd/{path}" if isinstance(path, int) else path)
        self.url = url
        try:
            # closed by close()
            self._file: IO[bytes] = open(path if isinstance(path, int) else self.path, mode)  # noqa: SIM115
        except OSError as e:
            raise PortError(e.errno or 5, f"{self.url}: {failure}: {e}") from e
        self._counters = PortStats()

    def fileno(self) -> int:
        return self._file.fileno()

    def stats(self) -> PortStats:
        return replace(self._counters)


class CaptureInPort(_CapturePort):
    """A pcap or pcapng file read as a port; `exhausted` turns True at the end of the file."""

    def __init__(self, path: str | Path | int, url: str = "") -> None:
        super().__init__(path, url or f"pcap:{path}", "rb", "cannot open capture")
        try:
            self._reader: PcapReader | PcapngReader = open_capture(self._file, DEFAULT_BURST)
        except BaseException:
            self._file.close()
            raise
        self._batches = iter(self._reader)
        self.exhausted = False

    def recv_batch(
        self, max_packets: int = DEFAULT_BURST, timeout: float | None = 0.0
    ) -> PacketBatch:
        if self.exhausted:
            return PacketBatch.empty()
        self._reader.batch_size = max_packets  # read by the iterator before each batch
        batch = next(self._batches, None)
        if batch is None:
            self.exhausted = True
            return PacketBatch.empty()
        self._counters.rx_packets += len(batch)
        self._counters.rx_bytes += batch.total_bytes
        return batch

    def send_batch(self, batch: PacketBatch) -> int:
        raise PortError(95, f"{self.url}: a capture input port cannot send")

    def close(self) -> None:
        self._reader.close()
        self._file.close()


class CaptureOutPort(_CapturePort):
    """Batches written to a pcap or pcapng file; packets with no timestamp get the time sent."""

    def __init__(self, path: str | Path | int, pcapng: bool = True, url: str = "") -> None:
        url = url or f"{'pcapng' if pcapng else 'pcap'}-out:{path}"
        super().__init__(path, url, "wb", "cannot create capture")
        self._writer: PcapWriter | PcapngWriter = (
            PcapngWriter(self._file) if pcapng else PcapWriter(self._file)
        )

    def recv_batch(
        self, max_packets: int = DEFAULT_BURST, timeout: float | None = 0.0
    ) -> PacketBatch:
        raise PortError(95, f"{self.url}: a capture output port cannot receive")

    def send_batch(self, batch: PacketBatch) -> int:
        if not len(batch):
            return 0
        ts = batch.timestamps_ns
        if not ts.all():
            ts = np.where(ts == 0, time.time_ns(), ts)
            batch = PacketBatch(
                batch.data, batch.offsets, batch.lengths, ts, batch.port, batch.meta
            )
        self._writer.write(batch)
        self._file.flush()  # a reader (or a killed NF) sees every batch once it is sent
        self._counters.tx_packets += len(batch)
        self._counters.tx_bytes += batch.total_bytes
        return len(batch)

    def close(self) -> None:
        if not self._file.closed:
            self._writer.close()  # flushes; the file is ours to close
            self._file.close()


def open_port(url: str) -> Port:
    """Open the port a URL names (see the module docstring for the forms)."""
    kind, target, keywords = parse_port_url(url)
    if kind == "afpacket":
        from nfaas.nf.ports.afpacket import AfPacketPort

        return AfPacketPort(target, url=url, **keywords)
    if kind == "tap":
        from nfaas.nf.ports.tap import TapPort

        return TapPort(target, url=url, **keywords)
    if kind in ("pcap", "pcapng"):
        return CaptureInPort(target, url=url)
    return CaptureOutPort(target, pcapng=kind == "pcapng-out", url=url)
