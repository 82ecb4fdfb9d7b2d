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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

import numpy as np

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
PORT_KINDS = ("afpacket", "tap", "pcap", "pcapng", "pcap-out", "pcapng-out")


class PortError(OSError):
    """A port could not be opened or used; the message names the port."""


class PortSpecError(ValueError):
    """A port URL is malformed; the message quotes it and says what is wrong."""


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

    def __init__(self, path: str | Path, url: str, mode: str, failure: str) -> None:
        self.path = Path(path)
        self.url = url
        try:
            self._file: IO[bytes] = open(self.path, mode)  # noqa: SIM115 (closed by close())
        except OSError as e:
            raise PortError(e.errno or 5, f"{self.url}: {failure}: {e}") from e
        self._counters = PortStats()

    def fileno(self) -> int:
        return self._file.fileno()

    def stats(self) -> PortStats:
        return replace(self._counters)


class CaptureInPort(_CapturePort):
    """A pcap or pcapng file read as a port; `exhausted` turns True at the end of the file."""

    def __init__(self, path: str | Path, url: str = "") -> None:
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

    def __init__(self, path: str | Path, pcapng: bool = True, url: str = "") -> None:
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
        self._counters.tx_packets += len(batch)
        self._counters.tx_bytes += batch.total_bytes
        return len(batch)

    def close(self) -> None:
        if not self._file.closed:
            self._writer.close()  # flushes; the file is ours to close
            self._file.close()


# -- port URLs ------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(value: str) -> bool:
    v = value.lower()
    if v in _TRUE | _FALSE:
        return v in _TRUE
    raise ValueError(f"expected a boolean (1/0, true/false, yes/no, on/off), got {value!r}")


def _positive_int(value: str) -> int:
    number = int(value, 0)
    if number <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return number


def _text(value: str) -> str:
    if not value:
        raise ValueError("expected a value")
    return value


# option name -> (keyword of the port's constructor, converter)
Options = dict[str, tuple[str, Callable[[str], Any]]]
_AFPACKET_OPTIONS: Options = {
    "netns": ("netns", _text),
    "promisc": ("promiscuous", _bool),
    "qdisc_bypass": ("qdisc_bypass", _bool),
    "ignore_outgoing": ("ignore_outgoing", _bool),
    "rx": ("rx_ring", _text),
    "tx": ("tx_mode", _text),
    "frame_size": ("frame_size", _positive_int),
    "block_size": ("block_size", _positive_int),
    "blocks": ("block_count", _positive_int),
    "block_timeout_ms": ("block_timeout_ms", _positive_int),
    "tx_frames": ("tx_frames", _positive_int),
    "fanout": ("fanout_group", int),
    "fix_checksums": ("fix_checksums", _bool),
}
_TAP_OPTIONS: Options = {
    "netns": ("netns", _text),
    "address": ("address", _text),
    "up": ("up", _bool),
    "multi_queue": ("multi_queue", _bool),
    "napi": ("napi", _bool),
    "persist": ("persist", _bool),
    "mtu": ("mtu", _positive_int),
}
_OPTIONS: dict[str, Options] = {
    "afpacket": _AFPACKET_OPTIONS,
    "tap": _TAP_OPTIONS,
    "pcap": {},
    "pcapng": {},
    "pcap-out": {},
    "pcapng-out": {},
}


def _check_ifname(url: str, name: str) -> None:
    if not name:
        raise PortSpecError(f"port {url!r}: missing interface name after ':'")
    if len(name.encode()) > 15 or any(c in name for c in "/ \t\n:"):
        raise PortSpecError(
            f"port {url!r}: bad interface name {name!r} (at most 15 bytes, no '/', ':' "
            "or white space)"
        )


def parse_port_url(url: str) -> tuple[str, str, dict[str, Any]]:
    """Split a port URL into (kind, target, constructor keywords), checking every part."""
    kind, sep, rest = url.partition(":")
    if not sep:
        raise PortSpecError(
            f"port {url!r}: expected KIND:TARGET with KIND one of {', '.join(PORT_KINDS)}"
        )
    if kind not in _OPTIONS:
        raise PortSpecError(
            f"port {url!r}: unknown port kind {kind!r} (expected one of {', '.join(PORT_KINDS)})"
        )
    target, _, query = rest.partition("?")
    known = _OPTIONS[kind]
    keywords: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise PortSpecError(f"port {url!r}: malformed options {query!r} (want a=1&b=2)") from None
    for name, value in pairs:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise PortSpecError(
                f"port {url!r}: unknown option {name!r} for {kind} ports (known: {allowed})"
            )
        keyword, convert = known[name]
        try:
            keywords[keyword] = convert(value)
        except ValueError as e:
            raise PortSpecError(f"port {url!r}: option {name}: {e}") from None
    if kind in ("afpacket", "tap"):
        _check_ifname(url, target)
    elif not target:
        raise PortSpecError(f"port {url!r}: missing file path after ':'")
    return kind, target, keywords


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
