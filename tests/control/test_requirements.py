"""requirements.txt in a bundle: installed at deploy time with pip, importable by the handler.

The dependency is a wheel built by the test and shipped inside the bundle, so pip needs no
network.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest

from nfaas.control.bundles import BundleError, BundleStore
from nfaas.core.spec import validate_spec
from nfaas.sandbox.base import InstanceHooks, LoadTimings, Request
from nfaas.sandbox.process import ProcessDriver


def _wheel() -> bytes:
    files = {
        "tinydep/__init__.py": b"ANSWER = 42\n",
        "tinydep-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinydep\nVersion: 0.1\n",
        "tinydep-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: nfaas-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("tinydep-0.1.dist-info/RECORD,,")
    files["tinydep-0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _bundle(requirements: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "handler.py",
            "import tinydep\n\ndef handle(event, context):\n    return {'answer': tinydep.ANSWER}\n",
        )
        archive.writestr("requirements.txt", requirements)
        archive.writestr("wheels/tinydep-0.1-py3-none-any.whl", _wheel())
    return buffer.getvalue()


@pytest.fixture
def data_dir():
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="nfaas-req-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_requirements_are_installed_and_importable(data_dir: Path) -> None:
    store = BundleStore(data_dir)
    sha = store.put(_bundle("# a local wheel\n./wheels/tinydep-0.1-py3-none-any.whl\n"))
    code = store.unpack(sha)
    assert code.deps_dir and (Path(code.deps_dir) / "tinydep" / "__init__.py").exists()
    assert store.unpack(sha).deps_dir == code.deps_dir  # installed once, reused

    async def invoke() -> bytes:
        driver = ProcessDriver(data_dir)
        await driver.start()
        try:
            shell = await driver.prepare()
            hooks = InstanceHooks(on_log=lambda _: None, on_exit=lambda _: None)
            instance = await shell.load(validate_spec("req", {}), "t", code, LoadTimings(), hooks)
            response = await instance.invoke(Request("GET", "/", "", [], b""), 10)
            await instance.stop()
            return response.body
        finally:
            await driver.close()

    assert asyncio.run(invoke()) == b'{"answer":42}'


def test_failing_requirements_are_a_bundle_error_naming_the_file(data_dir: Path) -> None:
    store = BundleStore(data_dir)
    sha = store.put(_bundle("./wheels/missing-0.1-py3-none-any.whl\n"))
    with pytest.raises(BundleError, match=r"requirements\.txt: pip install failed"):
        store.unpack(sha)
