"""What can be checked of the image without a Docker engine: a pinned base and hashed dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "deployments" / "Dockerfile").read_text()
HASHED = (ROOT / "deployments" / "image-requirements.txt").read_text()


def _pins(text: str) -> dict[str, str]:
    return {
        m["name"].lower().replace("_", "-"): m["version"]
        for m in re.finditer(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>\S+)", text, re.MULTILINE)
    }


def test_the_base_image_is_pinned_by_digest() -> None:
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE) == ["${BASE_IMAGE}"]


def test_dependencies_install_only_from_hashes_and_the_project_without_an_index() -> None:
    assert "pip install --require-hashes --no-deps -r /tmp/image-requirements.txt" in DOCKERFILE
    assert "pip install --no-deps --no-index --no-build-isolation ." in DOCKERFILE
    assert not re.search(r"pip install (?!--require-hashes|--no-deps --no-index)", DOCKERFILE)


def test_every_hashed_requirement_has_a_sha256_and_pins_what_the_lock_pins() -> None:
    entries = [e for e in HASHED.split("\n") if e and not e.startswith(("#", " "))]
    assert entries and all(e.endswith("\\") for e in entries)
    assert len(re.findall(r"--hash=sha256:[0-9a-f]{64}$", HASHED, re.MULTILINE)) == len(entries)
    hashed, locked = _pins(HASHED), _pins((ROOT / "requirements.lock").read_text())
    differing = {
        name: (v, locked[name]) for name, v in hashed.items() if name in locked and locked[name] != v
    }
    assert differing == {}, "run: .venv/bin/python scripts/image_requirements.py"
    for package in ("prefect", "kubernetes", "pymssql", "pydantic", "prefect-kubernetes", "setuptools"):
        assert package in hashed


def test_the_worker_plugin_is_the_version_the_tests_render_jobs_with() -> None:
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    (plugin,) = [d for d in dev if d.startswith("prefect-kubernetes==")]
    assert _pins(HASHED)["prefect-kubernetes"] == plugin.split("==")[1]
