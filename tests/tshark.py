"""Reading our captures back with the real tshark: the fields asked for, per packet.

`requires_tshark` skips a test where tshark is not installed; `tshark_fields` dissects a
capture with IP, UDP and TCP checksum verification on (so `*.checksum.status` reads 1 for
good, 0 for bad) and returns, per packet, each field's values: a list, since a field may
stand several times in one packet (outer and inner IP of a tunnel), empty where absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

requires_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def tshark_fields(path: Path, fields: list[str]) -> list[dict[str, list[str]]]:
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t"]
    for proto in ("ip", "udp", "tcp"):
        cmd += ["-o", f"{proto}.check_checksum:TRUE"]
    for field in fields:
        cmd += ["-e", field]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [
        {f: (c.split(",") if c else []) for f, c in zip(fields, line.split("\t"), strict=True)}
        for line in out.splitlines()
    ]
