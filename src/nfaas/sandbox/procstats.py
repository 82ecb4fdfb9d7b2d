"""Memory and CPU of a process, read from /proc."""

from __future__ import annotations

import os
import signal

from nfaas.sandbox.base import InstanceStats

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_stats(pid: int) -> InstanceStats:
    """RSS, PSS and USS (private clean + dirty) from smaps_rollup; CPU from stat."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1]) * 1024
        with open(f"/proc/{pid}/stat") as stat:
            after_name = stat.read().rsplit(")", 1)[1].split()
        cpu = (int(after_name[11]) + int(after_name[12])) / _CLOCK_TICKS
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return InstanceStats(pid=pid, rss=0, pss=0, uss=0, cpu_seconds=0.0)
    return InstanceStats(
        pid=pid,
        rss=fields.get("Rss", 0),
        pss=fields.get("Pss", 0),
        uss=fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        cpu_seconds=cpu,
    )


def vmm_overhead(pid: int, guest_mib: int) -> int:
    """PSS bytes of a QEMU process outside the guest's RAM: the VMM's own cost.

    The guest's RAM is the one mapping of exactly its size (QEMU allocates it in one block).
    """
    total = ram = 0
    size = pss = 0
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            for line in smaps:
                key, _, rest = line.partition(":")
                if key == "Size":
                    size = int(rest.split()[0])
                elif key == "Pss":
                    pss = int(rest.split()[0])
                    total += pss
                    if size == guest_mib * 1024:
                        ram += pss
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return (total - ram) * 1024


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"
