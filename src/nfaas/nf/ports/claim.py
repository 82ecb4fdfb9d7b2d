"""Ports split in two: claimed by a privileged process, attached in an unprivileged one.

An NF instance runs under its own uid, often in its own network namespace, without
CAP_NET_RAW or CAP_NET_ADMIN. The node, which has them, *claims* each port of the function:
it creates the AF_PACKET socket (in the interface's namespace) or the TAP queue, or opens the
capture file, checks that the target exists, and hands the file descriptors to the instance
(SCM_RIGHTS over the instance's stream). The instance *attaches*: it builds the port around
the descriptors (rings, fanout, batching) without needing any privilege.

A claimed AF_PACKET socket is already bound, so frames arriving while the instance starts
are queued rather than lost; `AfPacketPort` takes them before it sets up its ring. The same
socket is what the node watches to wake a function scaled to zero on its first packet.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from nfaas.core.porturl import parse_port_url
from nfaas.nf.ports import CaptureInPort, CaptureOutPort, Port, PortError, netns

__all__ = ["PortClaim", "attach_port", "claim_port"]

ETH_P_ALL = 0x0003
Info = dict[str, int | str]


@dataclass
class PortClaim:
    """One port of one instance, opened but not yet in use: its descriptors and facts
    about the target the instance cannot look up itself (a TAP device's name and MTU)."""

    name: str
    url: str
    fds: list[int]
    info: Info = field(default_factory=dict)
    watchable: bool = True  # readable when traffic waits (AF_PACKET, TAP; not a file)

    def close(self) -> None:
        """Close our copies of the descriptors (after handing them over, or to give up)."""
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


def claim_port(
    name: str, url: str, *, capture_dir: Path | None = None, fanout_group: int | None = None
) -> PortClaim:
    """Open the port `url` names on behalf of an instance (needs the privileges it needs).

    Capture paths are relative to `capture_dir`. `fanout_group` is recorded for the
    instance, which joins the group when it attaches (several instances, one interface).
    """
    kind, target, options = parse_port_url(url)
    if kind == "afpacket":
        return _claim_afpacket(name, url, target, options.get("netns"), fanout_group)
    if kind == "tap":
        return _claim_tap(name, url, target, options)
    path = (capture_dir or Path(".")) / target
    try:
        if kind in ("pcap", "pcapng"):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise PortError(e.errno or 5, f"port {name} ({url}): cannot open {path}: {e}") from e
    return PortClaim(name, url, [fd], {}, watchable=False)


def _claim_afpacket(
    name: str, url: str, ifname: str, where: str | None, fanout_group: int | None
) -> PortClaim:
    with netns(where):
        # Protocol 0 receives nothing until bind(): no frames of other interfaces sneak in.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((ifname, ETH_P_ALL))
    except OSError as e:
        sock.close()
        place = f"network namespace {where!r}" if where else "the node's namespace"
        raise PortError(
            e.errno or 19, f"port {name} ({url}): no interface {ifname!r} in {place}"
        ) from e
    info: Info = {} if fanout_group is None else {"fanout_group": fanout_group}
    return PortClaim(name, url, [sock.detach()], info)


def _claim_tap(name: str, url: str, device: str, options: dict[str, object]) -> PortClaim:
    from nfaas.nf.ports.tap import TapPort

    try:
        tap = TapPort(device, url=url, **options)  # type: ignore[arg-type]
    except OSError as e:
        raise PortError(e.errno or 5, f"port {name} ({url}): {e}") from e
    info: Info = {"device": tap.name, "mtu": tap.mtu}
    return PortClaim(name, url, [tap.detach()], info)


def attach_port(claim: PortClaim, port_id: int = 0) -> Port:
    """Build the port around a claim's descriptors (which the port then owns)."""
    kind, target, options = parse_port_url(claim.url)
    fd = claim.fds[0]
    if kind == "afpacket":
        from nfaas.nf.ports.afpacket import AfPacketPort

        options.pop("netns", None)  # the socket already lives there
        group = claim.info.get("fanout_group")
        if group is not None and "fanout_group" not in options:
            options["fanout_group"] = int(group)
        sock = socket.socket(fileno=fd)
        return AfPacketPort(target, url=claim.url, port_id=port_id, sock=sock, **options)
    if kind == "tap":
        from nfaas.nf.ports.tap import TapPort

        device, mtu = str(claim.info["device"]), int(claim.info["mtu"])
        return TapPort.adopt(fd, device, mtu, url=claim.url, port_id=port_id)
    if kind in ("pcap", "pcapng"):
        return CaptureInPort(fd, url=claim.url)
    return CaptureOutPort(fd, pcapng=kind == "pcapng-out", url=claim.url)
