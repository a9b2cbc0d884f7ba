"""What ``prefect deploy`` registers for this checkout, as prefect.yaml's build step ``checkout``: the
folder a process worker runs the flows from, and the release every deployment carries as its version.

Both come from the checkout itself, never from the caller's shell: ``{{ $PWD }}`` is whatever the
calling script or CI inherited (a folder that may not hold the code), while Prefect loads the
entrypoints (``flows/...``) from the current directory. The release is pyproject.toml's version, which
is also the image's tag (deployments/k8s-*-job-template.json; tests/unit/test_release.py).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Final

PROJECT: Final = "mssql-auth-rotation"


def checkout(directory: str = ".") -> dict[str, str]:
    """``{"directory": <absolute checkout>, "version": <release>}``; refuses any other folder."""
    here = Path(directory).resolve()
    try:
        project = tomllib.loads((here / "pyproject.toml").read_text()).get("project") or {}
    except (OSError, tomllib.TOMLDecodeError):
        project = {}
    if project.get("name") != PROJECT or not project.get("version"):
        raise ValueError(
            f"prefect deploy runs in {here}, which is not the {PROJECT} checkout (no pyproject.toml "
            f"naming {PROJECT}): nothing was registered. Run it from the folder that holds prefect.yaml "
            "and pyproject.toml (cd there; --prefect-file does not change where Prefect looks for the "
            "flows)"
        )
    return {"directory": str(here), "version": str(project["version"])}
