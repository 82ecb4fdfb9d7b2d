"""`network: bridged`: a veth per container instance on the node's bridge, from 198.18.0.0/15.

The range is the one RFC 2544 reserves for benchmarking; the bridge has no route out. The
bridge gets 198.18.0.1; instances get addresses from 198.18.1.1 on, handed back when they stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

BRIDGE = "nfaas0"
NETWORK = ipaddress.ip_network("198.18.0.0/15")
GATEWAY = ipaddress.ip_address("198.18.0.1")
FIRST_HOST = ipaddress.ip_address("198.18.1.1")


class BridgeError(Exception):
    pass


async def _ip(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise BridgeError(f"ip {' '.join(args)}: {err.decode().strip()}")


class Bridge:
    def __init__(self, name: str = BRIDGE) -> None:
        self.name = name
        self._free: list[ipaddress.IPv4Address] = []
        self._next = int(FIRST_HOST)

    async def ensure(self) -> None:
        """Create the bridge (idempotent): address 198.18.0.1/15, up, no forwarding set up."""
        try:
            await _ip("link", "add", self.name, "type", "bridge")
        except BridgeError as exc:
            if "File exists" not in str(exc):
                raise
        try:
            await _ip("addr", "add", f"{GATEWAY}/{NETWORK.prefixlen}", "dev", self.name)
        except BridgeError as exc:
            if "File exists" not in str(exc) and "already assigned" not in str(exc):
                raise
        await _ip("link", "set", self.name, "up")

    def take_address(self) -> ipaddress.IPv4Address:
        if self._free:
            return self._free.pop()
        address = ipaddress.IPv4Address(self._next)
        if address not in NETWORK or address == NETWORK.broadcast_address:
            raise BridgeError("198.18.0.0/15 is exhausted")
        self._next += 1
        return address

    def give_back(self, address: ipaddress.IPv4Address) -> None:
        self._free.append(address)

    async def attach(self, pid: int, host_end: str, address: ipaddress.IPv4Address) -> None:
        """A veth pair: ``host_end`` on the bridge, its peer as eth0 in ``pid``'s netns."""
        peer = f"{host_end}p"
        await _ip("link", "add", host_end, "type", "veth", "peer", "name", peer)
        await _ip("link", "set", host_end, "master", self.name, "up")
        await _ip("link", "set", peer, "netns", str(pid))
        await _nsenter(pid, "ip", "link", "set", peer, "name", "eth0")
        await _nsenter(pid, "ip", "addr", "add", f"{address}/{NETWORK.prefixlen}", "dev", "eth0")
        await _nsenter(pid, "ip", "link", "set", "eth0", "up")

    async def detach(self, host_end: str) -> None:
        with contextlib.suppress(BridgeError):  # may be gone with the container's namespace
            await _ip("link", "del", host_end)


async def _nsenter(pid: int, *command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "nsenter",
        "-t",
        str(pid),
        "-n",
        *command,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise BridgeError(f"{' '.join(command)} in {pid}'s netns: {err.decode().strip()}")
