"""Locate the control-plane binaries (kube-apiserver, kube-controller-manager, kube-scheduler, etcd),
building them once if needed.

Order: ``KUBEBUILDER_ASSETS`` (the envtest convention: a folder of binaries) when it holds all four,
then the project's cache (``$MSSQL_ROTATION_CACHE`` or ``~/.cache/mssql-auth-rotation``), which
``build-control-plane.sh`` fills from Debian's packages the first time, building only what it lacks.
envtest's own assets hold kube-apiserver and etcd only: such a folder is refused with the names of
what is missing (copy or link the other two in, or unset the variable). A good cache is never rebuilt.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
BUILD_SCRIPT = Path(__file__).with_name("build-control-plane.sh")


class BinariesUnavailable(RuntimeError):
    """The control-plane binaries could neither be found nor built."""


def cache_dir() -> Path:
    configured = os.environ.get("MSSQL_ROTATION_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "mssql-auth-rotation"


def missing(folder: Path) -> list[str]:
    """The control-plane binaries ``folder`` lacks (not there, or not executable)."""
    return [name for name in BINARIES if not os.access(folder / name, os.X_OK)]


def ensure_binaries() -> Path:
    """Return a folder holding every executable of ``BINARIES``."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        folder = Path(assets)
        lacking = missing(folder)
        if lacking:
            raise BinariesUnavailable(
                f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(lacking)} (envtest ships only "
                "kube-apiserver and etcd; the sandbox also runs kube-controller-manager and "
                "kube-scheduler): put them there, or unset KUBEBUILDER_ASSETS to let the sandbox "
                "build what its cache lacks"
            )
        return folder
    folder = cache_dir() / "bin"
    lacking = missing(folder)
    if not lacking:
        return folder
    print(
        f"[sandbox] {', '.join(lacking)} not cached in {folder}: building once from Debian's "
        "packages (a few minutes; later starts reuse the cache)",
        file=sys.stderr,
        flush=True,
    )
    result = subprocess.run(["bash", str(BUILD_SCRIPT), str(cache_dir())], check=False)
    lacking = missing(folder)
    if result.returncode != 0 or lacking:
        raise BinariesUnavailable(
            f"building the control plane failed (exit {result.returncode}; still missing: "
            f"{', '.join(lacking) or 'nothing'}); see the output above, or point KUBEBUILDER_ASSETS "
            f"at a folder with {', '.join(BINARIES)}"
        )
    return folder
