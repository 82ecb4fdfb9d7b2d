"""requirements.txt in a bundle: installed once at deploy time with pip.

That every tier's instances can import what was installed is in the conformance suite.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
from requirements_bundle import LOCAL_WHEEL, bundle_with_requirements

from nfaas.control.bundles import BundleError, BundleStore


@pytest.fixture
def data_dir():
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="nfaas-req-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_requirements_are_installed_once_and_zipped_for_guests(data_dir: Path) -> None:
    store = BundleStore(data_dir)
    sha = store.put(bundle_with_requirements(LOCAL_WHEEL))
    code = store.unpack(sha)
    assert code.deps_dir and (Path(code.deps_dir) / "tinydep" / "__init__.py").exists()
    assert store.unpack(sha).deps_dir == code.deps_dir  # installed once, reused
    with zipfile.ZipFile(code.deps_archive) as archive:
        names = archive.namelist()
    assert "tinydep/__init__.py" in names
    assert any(name.startswith("tinydep/__pycache__/") for name in names)  # compiled once


def test_failing_requirements_are_a_bundle_error_naming_the_file(data_dir: Path) -> None:
    store = BundleStore(data_dir)
    sha = store.put(bundle_with_requirements("./wheels/missing-0.1-py3-none-any.whl\n"))
    with pytest.raises(BundleError, match=r"requirements\.txt: pip install failed"):
        store.unpack(sha)
