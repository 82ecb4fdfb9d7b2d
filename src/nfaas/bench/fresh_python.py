"""Baseline runner: a fresh python3 that imports a handler and serves exactly one request.

This is what a platform without warm instances or zygotes does per request (the classic
fork-per-request watchdog): interpreter start-up, imports and the call, every time.
"""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace


def main(handler_dir: str) -> None:
    spec = importlib.util.spec_from_file_location("handler", f"{handler_dir}/handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    event = SimpleNamespace(
        body=sys.stdin.buffer.read(), headers={}, method="POST", query={}, path="/"
    )
    context = SimpleNamespace(
        function_name="baseline", namespace="default", instance_id="-", env={}
    )
    result = module.handle(event, context)
    sys.stdout.write(result if isinstance(result, str) else repr(result))


if __name__ == "__main__":
    main(sys.argv[1])
