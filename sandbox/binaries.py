"""Locate the control-plane binaries (kube-apiserver, etcd), building them once if needed.

Order: ``KUBEBUILDER_ASSETS`` (the envtest convention: a folder holding both binaries), then the
project's cache (``$MSSQL_ROTATION_CACHE`` or ``~/.cache/mssql-auth-rotation``), which
``build-control-plane.sh`` fills from Debian's packages the first time. A good cache is never rebuilt.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BINARIES = ("kube-apiserver", "etcd")
BUILD_SCRIPT = Path(__file__).with_name("build-control-plane.sh")


class BinariesUnavailable(RuntimeError):
    """The control-plane binaries could neither be found nor built."""


def cache_dir() -> Path:
    configured = os.environ.get("MSSQL_ROTATION_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "mssql-auth-rotation"


def _complete(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in BINARIES)


def ensure_binaries() -> Path:
    """Return a folder holding executable ``kube-apiserver`` and ``etcd``."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        folder = Path(assets)
        if not _complete(folder):
            raise BinariesUnavailable(
                f"KUBEBUILDER_ASSETS={assets} must hold executable kube-apiserver and etcd; "
                "unset it to let the sandbox build them"
            )
        return folder
    folder = cache_dir() / "bin"
    if _complete(folder):
        return folder
    print(
        f"[sandbox] kube-apiserver/etcd not cached in {folder}: building them once from Debian's "
        "packages (a few minutes; later starts reuse the cache)",
        file=sys.stderr,
        flush=True,
    )
    result = subprocess.run(["bash", str(BUILD_SCRIPT), str(cache_dir())], check=False)
    if result.returncode != 0 or not _complete(folder):
        raise BinariesUnavailable(
            f"building the control plane failed (exit {result.returncode}); see the output above, "
            "or point KUBEBUILDER_ASSETS at a folder with kube-apiserver and etcd"
        )
    return folder
