"""Code bundles: zip archives stored content-addressed (sha256), unpacked read-only for instances."""

from __future__ import annotations

import compileall
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from nfaas.core.bundle import pack
from nfaas.sandbox.base import CodeBundle

MAX_BUNDLE_BYTES = 64 * 1024**2
MAX_UNPACKED_BYTES = 256 * 1024**2
MAX_ENTRIES = 20000


class BundleError(ValueError):
    """A bundle that cannot be accepted; the message names the problem (and the entry)."""


def check_archive(data: bytes) -> None:
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle is {len(data)} bytes; the limit is {MAX_BUNDLE_BYTES}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
        raise BundleError(f"bundle is not a valid zip archive: {exc}") from None
    if len(entries) > MAX_ENTRIES:
        raise BundleError(f"bundle has {len(entries)} entries; the limit is {MAX_ENTRIES}")
    total = 0
    for entry in entries:
        path = PurePosixPath(entry.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in entry.filename:
            raise BundleError(f"bundle entry {entry.filename!r} points outside the bundle")
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise BundleError(f"bundle entry {entry.filename!r} is a symbolic link")
        total += entry.file_size
    if total > MAX_UNPACKED_BYTES:
        raise BundleError(f"bundle unpacks to {total} bytes; the limit is {MAX_UNPACKED_BYTES}")
    try:
        bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise BundleError(f"bundle is corrupt: {exc}") from None
    if bad is not None:
        raise BundleError(f"bundle entry {bad!r} is corrupt (CRC mismatch)")


class BundleStore:
    def __init__(self, data_dir: Path) -> None:
        self.archives = data_dir / "bundles"
        self.code = data_dir / "code"
        self.deps = data_dir / "deps"
        for folder in (self.archives, self.code, self.deps):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.code, self.deps):
            folder.chmod(0o711)

    def archive_path(self, sha256: str) -> Path:
        return self.archives / sha256[:2] / f"{sha256}.zip"

    def has(self, sha256: str) -> bool:
        return self.archive_path(sha256).exists()

    def put(self, data: bytes) -> str:
        """Validate and store an archive; returns its sha256."""
        check_archive(data)
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.archive_path(sha256)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha256

    def unpack(self, sha256: str) -> CodeBundle:
        """The unpacked code (and installed requirements) of a stored archive."""
        target = self.code / sha256
        if not target.exists():
            staging = Path(tempfile.mkdtemp(dir=self.code, prefix=".unpack-"))
            with zipfile.ZipFile(self.archive_path(sha256)) as archive:
                archive.extractall(staging)
            compileall.compile_dir(staging, quiet=2)
            _make_readable(staging)
            os.replace(staging, target)
        deps = self._install_requirements(target)
        return CodeBundle(
            sha256=sha256,
            code_dir=str(target),
            deps_dir=deps,
            archive=str(self.archive_path(sha256)),
            deps_archive=self._deps_archive(Path(deps)) if deps else "",
        )

    def _deps_archive(self, deps_dir: Path) -> str:
        """The installed requirements as one zip (made once), for microVM guests."""
        path = deps_dir.with_suffix(".zip")
        if not path.exists():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(pack(deps_dir, bytecode=True))
            os.replace(tmp, path)
        return str(path)

    def _install_requirements(self, code_dir: Path) -> str:
        requirements = code_dir / "requirements.txt"
        if not requirements.exists():
            return ""
        text = requirements.read_bytes()
        if not any(
            line.strip() and not line.strip().startswith(b"#") for line in text.splitlines()
        ):
            return ""
        target = self.deps / hashlib.sha256(text).hexdigest()
        if target.exists():
            return str(target)
        staging = Path(tempfile.mkdtemp(dir=self.deps, prefix=".install-"))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-input",
                "--disable-pip-version-check",
                "--target",
                str(staging),
                "-r",
                "requirements.txt",
            ],
            cwd=code_dir,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise BundleError("requirements.txt: pip install failed: " + " | ".join(tail))
        _make_readable(staging)
        os.replace(staging, target)
        return str(target)

    def remove_unused(self, in_use: set[str]) -> None:
        for folder in self.code.iterdir():
            if folder.name not in in_use and not folder.name.startswith("."):
                shutil.rmtree(folder, ignore_errors=True)


def _make_readable(root: Path) -> None:
    """Instances run as other uids: code must be readable, never writable, by them."""
    root.chmod(0o755)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
