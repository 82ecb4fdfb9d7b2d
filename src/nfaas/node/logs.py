"""Function logs: a ring buffer per function, a file on disk, and live followers."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

FunctionKey = tuple[str, str]  # (namespace, name)
KEEP_LINES = 2000


@dataclass(frozen=True)
class LogLine:
    timestamp: float
    namespace: str
    function: str
    instance: str
    text: str

    def to_dict(self) -> dict[str, object]:
        return {
            "timestamp": self.timestamp,
            "namespace": self.namespace,
            "name": self.function,
            "instance": self.instance,
            "text": self.text,
        }


class LogBook:
    def __init__(self, logs_dir: Path) -> None:
        self._dir = logs_dir
        self._lines: dict[FunctionKey, deque[LogLine]] = {}
        self._files: dict[FunctionKey, IO[str]] = {}
        self._followers: dict[FunctionKey, set[asyncio.Queue[LogLine]]] = {}

    def _file(self, key: FunctionKey) -> IO[str]:
        handle = self._files.get(key)
        if handle is None:
            folder = self._dir / key[0]
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / f"{key[1]}.log", "a", buffering=1)  # noqa: SIM115 - kept open
            self._files[key] = handle
        return handle

    def write(self, key: FunctionKey, instance: str, text: str) -> None:
        line = LogLine(time.time(), key[0], key[1], instance, text)
        self._lines.setdefault(key, deque(maxlen=KEEP_LINES)).append(line)
        self._file(key).write(f"{line.timestamp:.6f} {instance} {text}\n")
        for queue in self._followers.get(key, ()):
            queue.put_nowait(line)

    def tail(self, key: FunctionKey, count: int = 100, since: float = 0.0) -> list[LogLine]:
        lines = [line for line in self._lines.get(key, ()) if line.timestamp >= since]
        return lines[-count:] if count > 0 else lines

    def follow(self, key: FunctionKey) -> asyncio.Queue[LogLine]:
        queue: asyncio.Queue[LogLine] = asyncio.Queue(maxsize=10000)
        self._followers.setdefault(key, set()).add(queue)
        return queue

    def unfollow(self, key: FunctionKey, queue: asyncio.Queue[LogLine]) -> None:
        self._followers.get(key, set()).discard(queue)

    def forget(self, key: FunctionKey) -> None:
        self._lines.pop(key, None)
        handle = self._files.pop(key, None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
