"""The microVM guest image: an initramfs nfaas builds from the node's Debian packages.

It holds Debian's python3 and the shared libraries it and its extension modules link against,
the standard library (without tests, GUI and packaging tools), msgspec, and nfaas's worker
package; ``/init`` starts ``nfaas.worker.guest_main``. The image is rebuilt when its inputs
change (content-addressed by their versions).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
SKIP_STDLIB = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "config-3.11-x86_64-linux-gnu",
    "site-packages",
    "dist-packages",
    "venv",
}
SKIP_DYNLOAD = re.compile(r"^(_test|_xx|_ctypes_test|_curses|_tkinter|_dbm|_gdbm|nis|readline)")
DEVICES = (("dev/console", 5, 1), ("dev/ttyS0", 4, 64), ("dev/ttyS1", 4, 65), ("dev/null", 1, 3))
INIT = """#!/usr/bin/python3 -S
import sys
sys.path[:0] = ["/opt/nfaas", "/usr/lib/python3.11/lib-dynload"]
from nfaas.worker import guest_main
guest_main.main()
"""


def _shared_libraries(binaries: list[Path]) -> set[Path]:
    found: set[Path] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        found.update(Path(p) for p in re.findall(r"(/\S+\.so[\w.]*)", out))
    return found


def _files(root: Path, skip_dirs: set[str]) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs)
        for name in sorted(files):
            yield Path(folder) / name


def image_inputs() -> dict[Path, Path]:
    """Guest path → host path of every file in the image."""
    import msgspec

    import nfaas

    files: dict[Path, Path] = {Path("usr/bin/python3"): PYTHON}
    for path in _files(STDLIB, SKIP_STDLIB):
        if path.parent.name == "lib-dynload" and SKIP_DYNLOAD.match(path.name):
            continue
        files[Path(str(path).lstrip("/"))] = path
    msgspec_dir = Path(msgspec.__file__).parent
    for path in _files(msgspec_dir, set()):
        files[Path("opt/nfaas/msgspec") / path.relative_to(msgspec_dir)] = path
    package = Path(nfaas.__file__).parent
    files[Path("opt/nfaas/nfaas/__init__.py")] = package / "__init__.py"
    for path in _files(package / "worker", {"__pycache__"}):
        files[Path("opt/nfaas/nfaas/worker") / path.relative_to(package / "worker")] = path
    binaries = [PYTHON, *(p for p in files.values() if p.suffix == ".so")]
    for lib in _shared_libraries(binaries):
        files[Path(str(lib.resolve()).lstrip("/"))] = lib.resolve()
        files[Path(str(lib).lstrip("/"))] = lib.resolve()
    return files


def _entry(
    out: BinaryIO, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
) -> None:
    """One record of a cpio "newc" archive, the format the kernel unpacks an initramfs from."""
    encoded = name.encode() + b"\0"
    _entry.ino += 1  # type: ignore[attr-defined]
    fields = (_entry.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)  # type: ignore[attr-defined]
    header = b"070701" + "".join(f"{v:08X}" for v in fields).encode()
    out.write(header + encoded)
    out.write(b"\0" * ((4 - (len(header) + len(encoded)) % 4) % 4))
    out.write(data)
    out.write(b"\0" * ((4 - len(data) % 4) % 4))


_entry.ino = 0  # type: ignore[attr-defined]


def write_cpio(files: dict[Path, Path], dest: Path) -> None:
    directories = {"proc", "sys", "dev", "tmp", "code", "usr/lib64"}
    for guest in files:
        directories.update(str(p) for p in guest.parents if str(p) != ".")
    tmp = dest.with_suffix(".part")
    with open(tmp, "wb") as out:
        for folder in sorted(directories):
            _entry(out, folder, stat.S_IFDIR | 0o755)
        for link, target in (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin")):
            _entry(out, link, stat.S_IFLNK | 0o777, target.encode())
        for guest, host in sorted(files.items()):
            _entry(
                out,
                str(guest),
                stat.S_IFREG | (0o755 if os.access(host, os.X_OK) else 0o644),
                host.read_bytes(),
            )
        _entry(out, "init", stat.S_IFREG | 0o755, INIT.encode())
        for name, major, minor in DEVICES:
            _entry(out, name, stat.S_IFCHR | 0o600, rdev=(major, minor))
        _entry(out, "TRAILER!!!", 0)
    os.replace(tmp, dest)


def build_image(cache_dir: Path) -> Path:
    """The guest initramfs for this node, built once per set of inputs."""
    files = image_inputs()
    digest = hashlib.sha256()
    for guest, host in sorted(files.items()):
        info = host.stat()
        digest.update(f"{guest}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    digest.update(INIT.encode())
    dest = cache_dir / f"initrd-{digest.hexdigest()[:16]}.cpio"
    if not dest.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_cpio(files, dest)
    return dest


def find_kernel(configured: str | None = None) -> Path | None:
    if configured:
        return Path(configured)
    candidates = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64")) or sorted(
        Path("/boot").glob("vmlinuz-*")
    )
    return candidates[-1] if candidates else None


if __name__ == "__main__":
    print(build_image(Path(sys.argv[1])))
