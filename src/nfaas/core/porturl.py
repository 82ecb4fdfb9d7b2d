"""Port URLs: the syntax NF manifests use to bind a function's ports.

    afpacket:veth0?netns=mid&qdisc_bypass=1    AF_PACKET socket with mmap rings
    tap:nfaas-tap0?address=198.18.5.1/24       TAP device via /dev/net/tun
    pcap:/path/in.pcap   pcapng:/path/in.pcapng   read a capture (either format is detected)
    pcap-out:/path/out.pcap   pcapng-out:/path/out.pcapng   write a capture

Only the syntax lives here (the spec validates manifests with it); `nfaas.nf.ports` opens
the ports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

PORT_KINDS = ("afpacket", "tap", "pcap", "pcapng", "pcap-out", "pcapng-out")
CAPTURE_KINDS = ("pcap", "pcapng", "pcap-out", "pcapng-out")


class PortSpecError(ValueError):
    """A port URL is malformed; the message quotes it and says what is wrong."""


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
