"""A bundle whose requirements.txt names a wheel built here and shipped inside it, so pip
needs no network."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile


def tiny_wheel() -> bytes:
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


def bundle_with_requirements(requirements: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "handler.py",
            "import tinydep\n\ndef handle(event, context):\n    return {'answer': tinydep.ANSWER}\n",
        )
        archive.writestr("requirements.txt", requirements)
        archive.writestr("wheels/tinydep-0.1-py3-none-any.whl", tiny_wheel())
    return buffer.getvalue()


LOCAL_WHEEL = "# a local wheel\n./wheels/tinydep-0.1-py3-none-any.whl\n"
