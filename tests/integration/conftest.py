"""Fixtures for the integration suite; the harness itself is in ``platform_harness.py``."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from platform_harness import CLEAN_EXIT, Platform, new_data_dir


@pytest.fixture(scope="session")
def platform_factory() -> Iterator[Callable[..., Platform]]:
    """Start extra platforms; each is stopped (and must exit 0) and removed at session end."""
    started: list[Platform] = []

    def start(data_dir: Path | None = None, **kwargs: Any) -> Platform:
        platform = Platform(data_dir or new_data_dir(), **kwargs)
        platform.start()
        started.append(platform)
        return platform

    yield start
    codes = [(p.data_dir, p.stop()) for p in started if p.proc is not None]
    for platform in started:
        platform.cleanup()
    assert all(code in CLEAN_EXIT for _, code in codes), f"platforms exited badly: {codes}"


@pytest.fixture(scope="session")
def platform() -> Iterator[Platform]:
    """The shared platform. Stopped with SIGTERM at the end: it must exit within 10 s, cleanly
    (see CLEAN_EXIT for why -SIGTERM is tolerated here)."""
    shared = Platform(new_data_dir(), extra_env={"NFAAS_CANARY_SECRET": "do-not-leak"})
    shared.start()
    try:
        yield shared
    finally:
        if shared.proc is not None:
            code = shared.stop()
            log = shared.log_tail()
            shared.cleanup()
            assert code in CLEAN_EXIT, f"nfaas up exited with {code} after SIGTERM:\n{log}"


_names = itertools.count(1)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("echo")`` -> ``echo-3-1a2b3c``: valid, and distinct across the session."""
    run = uuid.uuid4().hex[:6]

    def make(prefix: str) -> str:
        return f"{prefix}-{next(_names)}-{run}"

    return make
