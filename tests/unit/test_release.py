"""rotation/release.py, prefect.yaml's build step: the folder and release `prefect deploy` registers
come from the checkout, and the release is the image's tag."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from rotation.release import checkout

ROOT = Path(__file__).resolve().parents[2]
RELEASE = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_checkout_is_its_absolute_folder_and_pyprojects_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "flows")  # a relative path and another current directory
    assert checkout("..") == {"directory": str(ROOT), "version": RELEASE}


def test_another_folder_is_refused_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\nversion = "9"\n')
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ValueError, match=r"not the mssql-auth-rotation checkout.*nothing was registered"):
        checkout()
    with pytest.raises(ValueError, match=r"Run it from the folder that holds prefect.yaml"):
        checkout(str(tmp_path / "missing"))


def test_the_images_tag_is_the_release() -> None:
    templates = sorted((ROOT / "deployments").glob("k8s-*job-template.json"))
    images = {
        path.name: re.findall(r'"image": "([^"]+)"', json.dumps(json.loads(path.read_text()), indent=1))
        for path in templates
    }
    assert templates and all(images.values())
    assert {name: {i.rsplit(":", 1)[1] for i in found} for name, found in images.items()} == {
        name: {RELEASE} for name in images
    }
    assert f"mssql-auth-rotation:{RELEASE} ." in (ROOT / "deployments" / "Dockerfile").read_text()
