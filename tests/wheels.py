"""A wheel made on the fly for the offline-install tests: a pure-Python project no index has, so
nothing real is ever installed or shadowed."""

import base64
import hashlib
import zipfile
from pathlib import Path

PROBE = "sa-whl-probe"
PROBE_MODULE = "sa_whl_probe"


def probe_wheel(folder: Path, version: str = "0.1", value: int = 42) -> Path:
    """A wheel of PROBE_MODULE (VALUE = value) with a dist-info pip accepts (METADATA, WHEEL, RECORD)."""
    dist_info = f"{PROBE_MODULE}-{version}.dist-info"
    files = {
        f"{PROBE_MODULE}/__init__.py": f"VALUE = {value}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PROBE_MODULE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path
