"""Run wrk (the C load generator from Debian) and parse its report."""

from __future__ import annotations

import re
import shutil
import subprocess

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    url: str, connections: int, seconds: int, threads: int = 1, script: str | None = None
) -> dict[str, float]:
    """``script``: a wrk Lua script file (e.g. one that makes every request a POST)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk; scripts/setup does it)")
    extra = ["-s", script] if script else []
    out = subprocess.run(
        [binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = {"connections": connections, "seconds": seconds}
    for pct in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if match:
            result[f"p{pct}_ms"] = _ms(match.group(1))
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["requests_per_s"] = float(match.group(1)) if match else 0.0
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = float(match.group(1)) if match else 0.0
    match = re.search(r"(\d+) requests in", out)
    result["requests"] = float(match.group(1)) if match else 0.0
    return result
