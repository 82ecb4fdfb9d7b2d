"""A container's cgroup, written directly: limits at load time, freezing, its processes.

Works on cgroup v2 and on the v1 hierarchy (one directory per controller). Writing the files
directly costs microseconds; asking the OCI runtime (``runc update``) costs an exec.
"""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000


def unified() -> bool:
    return (ROOT / "cgroup.controllers").exists()


class Cgroup:
    def __init__(self, path: str) -> None:
        self.path = path.strip("/")
        self.v2 = unified()

    def file(self, controller: str, name: str) -> Path:
        if self.v2:
            return ROOT / self.path / name
        return ROOT / controller / self.path / name

    def _write(self, controller: str, name: str, value: str) -> None:
        self.file(controller, name).write_text(value)

    def set_limits(self, memory: int, cpu: float, pids: int) -> None:
        quota = max(1000, int(cpu * CPU_PERIOD_US))
        if self.v2:
            self._write("memory", "memory.max", str(memory))
            self._write("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}")
        else:
            self._write("memory", "memory.limit_in_bytes", str(memory))
            self._write("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US))
            self._write("cpu", "cpu.cfs_quota_us", str(quota))
        self._write("pids", "pids.max", str(pids))

    def freeze(self, frozen: bool) -> None:
        """Freeze or thaw every process of the container; returns once the state holds."""
        if self.v2:
            self._write("freezer", "cgroup.freeze", "1" if frozen else "0")
            return
        want = "FROZEN" if frozen else "THAWED"
        self._write("freezer", "freezer.state", want)
        state = self.file("freezer", "freezer.state")
        for _ in range(1000):
            if state.read_text().strip() == want:
                return
            time.sleep(0.0005)

    def pids(self) -> list[int]:
        try:
            text = self.file("pids", "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(line) for line in text.split()]

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        try:
            text = self.file("memory", name).read_text()
        except FileNotFoundError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0
