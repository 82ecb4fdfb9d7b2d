"""`network: bridged`: a veth per container instance on the node's bridge, from 198.18.0.0/15.

The range is the one RFC 2544 reserves for benchmarking; the bridge has no route out. The
bridge gets 198.18.0.1; instances get addresses from 198.18.1.1 on, handed back when they stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from pathlib import Path

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


LEASES = Path("/run/nfaas-bridge-leases")  # tmpfs: gone at reboot, with the bridge


def _lease(address: ipaddress.IPv4Address) -> bool:
    """Take the host-wide lease on ``address`` for this process, if nobody alive holds it."""
    LEASES.mkdir(mode=0o700, exist_ok=True)
    path = LEASES / str(address)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                holder = int(path.read_text() or "0")
            except (OSError, ValueError):
                holder = 0
            if holder == os.getpid() or (holder and Path(f"/proc/{holder}").exists()):
                return False
            with contextlib.suppress(OSError):
                path.unlink()  # its holder is gone
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


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
        """A free address, leased on the host: every nfaas on a node shares the bridge, so
        the lease (a file naming the holder's pid) keeps two platforms from handing out the
        same address (a lease whose holder is gone is taken over)."""
        while self._free:
            address = self._free.pop()
            if _lease(address):
                return address
        while True:
            address = ipaddress.IPv4Address(self._next)
            if address not in NETWORK or address == NETWORK.broadcast_address:
                raise BridgeError("198.18.0.0/15 is exhausted")
            self._next += 1
            if _lease(address):
                return address

    def give_back(self, address: ipaddress.IPv4Address) -> None:
        with contextlib.suppress(OSError):
            (LEASES / str(address)).unlink()
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
        # The address may have belonged to an instance that is gone: the host's neighbour
        # entry would still point at that one's MAC, and clients' packets go nowhere until
        # it expires (tens of seconds). Forget it now.
        with contextlib.suppress(BridgeError):
            await _ip("neigh", "flush", "to", str(address), "dev", self.name)

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
