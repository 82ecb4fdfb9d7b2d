"""Unprivileged uids for instances: one per live instance, so instances cannot touch each other."""

from __future__ import annotations

import os

FIRST_UID = 200_000
COUNT = 60_000


class UidPool:
    def __init__(self, first: int = FIRST_UID, count: int = COUNT) -> None:
        self._free = list(range(first + count - 1, first - 1, -1))
        self.enabled = os.getuid() == 0  # without root we cannot switch uid; instances keep ours

    def take(self) -> int:
        if not self.enabled:
            return -1
        if not self._free:
            raise RuntimeError("no free instance uid left")
        return self._free.pop()

    def give_back(self, uid: int) -> None:
        if uid >= 0:
            self._free.append(uid)
