"""What a run records about where it ran: software versions and the device."""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = ("cryostack", "torch", "numpy", "pyarrow", "mrcfile", "starfile", "gemmi")


def software_versions(external_programs: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python, the packages a result depends on, and named external programs."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    for program in external_programs:
        versions[program] = external_program_version(program)
    return versions


def external_program_version(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        return "not found"
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"{path} (version unknown)"
    text = (out.stdout or out.stderr).strip().splitlines()
    return f"{path}: {text[0]}" if text else path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    """CPU model and core count, and the GPUs torch sees."""
    import os

    import torch

    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(paths: list[Path]) -> str:
    """One hash over several files (name-independent, order-dependent)."""
    if len(paths) == 1:
        return file_sha256(paths[0])
    digest = hashlib.sha256()
    for p in paths:
        digest.update(file_sha256(p).encode())
    return digest.hexdigest()
