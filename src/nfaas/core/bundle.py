"""Pack a handler directory into a deterministic zip (same files, same bytes, same sha256)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules"}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def pack(handler_dir: Path, bytecode: bool = False) -> bytes:
    """``bytecode``: keep compiled ``__pycache__`` files (installed packages, shipped to
    sandboxes where compiling at every import would be slow); never for handler code."""
    skip_dirs = SKIP_DIRS - {"__pycache__"} if bytecode else SKIP_DIRS
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for folder, dirs, files in os.walk(handler_dir):
            dirs[:] = sorted(d for d in dirs if d not in skip_dirs)
            for name in sorted(files):
                path = Path(folder) / name
                if path.is_symlink() or (name.endswith(".pyc") and not bytecode):
                    continue
                info = zipfile.ZipInfo(path.relative_to(handler_dir).as_posix(), FIXED_TIME)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()
