"""Where a run's numbers came from: package versions, the git commit, the hardware (kept in each manifest
invocation, so a difference between two runs' rows can be traced to what changed)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("ptq-bench", "torch", "transformers", "lm-eval", "tokenizers", "safetensors", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_hash() -> str:
    """This checkout's commit; "unknown" for an installed copy, even one inside another repository (a
    venv in the user's own project), whose commit says nothing about this code."""
    here = Path(__file__).resolve().parent
    try:
        top, out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=here, capture_output=True,
                                  text=True, timeout=5, check=True).stdout.splitlines()
        if Path(top).resolve() / "ptq_bench" != here:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> dict[str, Any]:
    import torch

    # the CPU kernels torch dispatches to (e.g. AVX2 / AVX512) change float summation, and training on a
    # host with other kernels gives other models (quickstart FP16 WikiText-2: 563.85 on one host, 568.69 on
    # another, with the same FP16 training code and packages; NOTES.md)
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
