"""The image's install steps, run as deployments/Dockerfile runs them, in a clean virtual environment.

No container engine is needed: the Dockerfile is read instruction by instruction (tests/image/dockerfile.py)
and each one is done on this machine, in a folder standing for the image's file system:

- FROM: a new virtual environment of the base image's Python minor version (python:3.11 → Python 3.11),
  nothing else installed in it, its bin/ first on PATH (in the base image `pip` and `python` are the
  base's own);
- ENV, WORKDIR, COPY: as Docker does them; COPY takes the files from the checkout (the build context is
  the repository root), an absolute destination lands under that folder, and RUN lines naming it are
  given the folder's path instead;
- RUN: through `/bin/sh -c`, in the WORKDIR, with the Dockerfile's ENV and nothing of this machine's
  environment but its network settings (and none of its pip configuration: its extra local indexes are
  not in an image build). The RUN that creates the non-root user is skipped (it changes the machine's
  accounts); any other RUN the test does not know fails it, so that a new step is not silently left out;
- the one difference, for speed: pip takes the hashed files from a wheelhouse of this project's cache
  (``<cache>/image-wheels``, see sandbox.binaries.cache_dir) rather than from PyPI. The wheelhouse is
  filled from PyPI with ``pip download --require-hashes`` of the same file whenever a hash of
  deployments/image-requirements.txt has no file there, and the install checks every hash again. (pip's
  own cache cannot do this here: this machine's network strips PyPI's Cache-Control headers, so pip's
  HTTP cache stores no download; measured, docs/performance.md);
- CMD: run as the image would run it (`prefect version`).

Then the image must answer what the deployments ask of it: the flows import from the WORKDIR (the
deployments' working directory) and from anywhere, `prefect worker start` has the kubernetes worker
type (prefect-kubernetes), and what is installed is exactly deployments/image-requirements.txt plus the
project. That file being what scripts/image_requirements.py makes of requirements.lock and pyproject.toml
is checked too, so a change to either that breaks the image fails here (tests/unit/test_image.py checks
the pins against the lock without the network).

It needs PyPI. The first run downloads about 125 files (57 MB); later runs only check the wheelhouse
(docs/performance.md, "The image").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox.binaries import cache_dir
from tests.image.dockerfile import DOCKERFILE, ROOT, env_pairs, instructions, python_minor_of_the_base

# A first run on an empty pip cache downloads and installs everything: more than pytest's default 300 s
# on a slow link. A hang guard, not a speed target.
pytestmark = pytest.mark.timeout(1200)

HASHED = ROOT / "deployments" / "image-requirements.txt"
# This machine's network settings, which an image build would have its own of: passed through.
NETWORK_SETTINGS = (
    "PIP_CERT",
    "PIP_INDEX_URL",
    "PIP_DEFAULT_TIMEOUT",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
# The one RUN that is not an install step: the non-root user (it would change this machine's accounts).
USER_CREATION = re.compile(r"^groupadd .*&& useradd ", re.DOTALL)


@dataclass
class Image:
    """What the install steps left: the "image" folder, its Python, and how to run a command in it."""

    folder: Path
    venv: Path
    workdir: Path = field(init=False)
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)
    user: str = "root"
    ran: list[str] = field(default_factory=list)  # the RUN lines run, as written
    absolute: set[str] = field(default_factory=set)  # absolute paths COPY and WORKDIR named
    seconds: dict[str, float] = field(default_factory=dict)

    def path(self, path: str, relative_to: Path | None = None) -> Path:
        """A path of the image, in the folder that stands for its file system."""
        if path.startswith("/"):
            return self.folder / path.lstrip("/")
        return (relative_to or self.workdir) / path

    def run(self, *command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, cwd=cwd or self.workdir, env=self.env, capture_output=True, text=True, check=False
        )


def _hashes(requirements: str) -> set[str]:
    return set(re.findall(r"--hash=sha256:([0-9a-f]{64})", requirements))


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def fill_the_wheelhouse(python: Path, env: dict[str, str]) -> Path:
    """Every file image-requirements.txt hashes, in <cache>/image-wheels, downloaded from PyPI when
    one is missing (`pip download --require-hashes`: a file with another hash is refused); files of no
    pinned hash are removed, so the folder holds one set."""
    wheelhouse = cache_dir() / "image-wheels"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    wanted = _hashes(HASHED.read_text())
    present = {_sha256(path): path for path in wheelhouse.iterdir() if path.is_file()}
    for digest, path in present.items():
        if digest not in wanted:
            path.unlink()
    if wanted - present.keys():
        command = [str(python), "-m", "pip", "download", "--quiet", "--require-hashes", "--no-deps"]
        command += ["-r", str(HASHED), "-d", str(wheelhouse)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"downloading the image's files from PyPI failed:\n{_tail(result)}"
    return wheelhouse


def _python(minor: str) -> str:
    if f"{sys.version_info.major}.{sys.version_info.minor}" == minor:
        return sys.executable  # `-m venv` from a virtualenv makes one from its base interpreter
    found = shutil.which(f"python{minor}")
    if not found:
        pytest.fail(f"the image's base is Python {minor}: this test needs python{minor} on PATH")
    return found


def _tail(result: subprocess.CompletedProcess[str], lines: int = 40) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


def _copy(image: Image, words: list[str]) -> None:
    if any(w.startswith("--") for w in words):
        raise AssertionError(f"COPY {' '.join(words)}: flags are not emulated; teach this test them")
    *sources, destination = words
    if destination.startswith("/"):
        image.absolute.add(destination.rstrip("/"))
    target = image.path(destination)
    for source in sources:
        origin = ROOT / source
        assert origin.exists(), f"COPY {source}: no such file in the build context (the repository root)"
        if origin.is_dir():
            shutil.copytree(origin, target, dirs_exist_ok=True)
        elif destination.endswith("/") or len(sources) > 1:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target / origin.name)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)


def _in_the_folder(image: Image, command: str) -> str:
    """The RUN line with each absolute path that COPY or WORKDIR named swapped for the folder's."""
    for path in sorted(image.absolute, key=len, reverse=True):
        command = re.sub(rf"(?<![\w.]){re.escape(path)}(?![\w.-])", str(image.path(path)), command)
    return command


def build(folder: Path) -> Image:
    text = DOCKERFILE.read_text()
    venv = folder / "venv"
    started = time.monotonic()
    subprocess.run([_python(python_minor_of_the_base(text)), "-m", "venv", str(venv)], check=True)
    image = Image(folder=folder / "fs", venv=venv)
    image.workdir = image.folder
    image.workdir.mkdir(parents=True)
    image.env = {
        "PATH": f"{venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(image.path("/root")),
        "LANG": "C.UTF-8",  # the python images' own
        "PIP_CONFIG_FILE": os.devnull,  # no pip.conf of this machine (pip reads none with devnull)
        # As the Makefile: Prefect reaches for no analytics service from these machines.
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    image.env |= {k: os.environ[k] for k in NETWORK_SETTINGS if k in os.environ}
    image.path("/root").mkdir(parents=True)
    image.seconds["venv"] = time.monotonic() - started
    started = time.monotonic()
    wheelhouse = fill_the_wheelhouse(venv / "bin" / "python", image.env)
    image.seconds["wheelhouse"] = time.monotonic() - started
    # The RUN lines' pip takes the hashed files from there (module docstring), and from nowhere else.
    image.env |= {"PIP_FIND_LINKS": str(wheelhouse), "PIP_NO_INDEX": "1"}
    for step in instructions(text):
        where = f"Dockerfile line {step.line}: {step.keyword} {step.arguments}"
        if step.keyword in ("ARG", "FROM"):
            continue  # the base is the venv made above
        if step.keyword == "ENV":
            for key, value in env_pairs(step).items():
                if key == "HOME":
                    value = str(image.path(value))
                    Path(value).mkdir(parents=True, exist_ok=True)
                image.env[key] = value
        elif step.keyword == "WORKDIR":
            image.absolute.add(step.arguments.rstrip("/"))
            image.workdir = image.path(step.arguments)
            image.workdir.mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            _copy(image, step.words())
        elif step.keyword == "USER":
            image.user = step.arguments
        elif step.keyword == "CMD":
            image.cmd = json.loads(step.arguments)
        elif step.keyword == "RUN":
            if USER_CREATION.match(step.arguments):
                continue
            assert not step.arguments.startswith("["), f"{where}: exec-form RUN is not emulated"
            assert "pip " in step.arguments, f"{where}: a RUN step this test does not know; teach it"
            started = time.monotonic()
            result = subprocess.run(
                ["/bin/sh", "-c", _in_the_folder(image, step.arguments)],
                cwd=image.workdir,
                env=image.env,
                capture_output=True,
                text=True,
                check=False,
            )
            image.seconds[f"RUN line {step.line}"] = time.monotonic() - started
            assert result.returncode == 0, (
                f"{where}\nfailed with exit code {result.returncode}:\n{_tail(result)}"
            )
            image.ran.append(step.arguments)
        else:
            raise AssertionError(f"{where}: an instruction this test does not emulate; teach it")
    return image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    folder = tmp_path_factory.mktemp("image")
    try:
        built = build(folder)
        print(f"image install steps: {', '.join(f'{k} {v:.1f} s' for k, v in built.seconds.items())}")
        yield built
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # several hundred MB


def _pins(text: str) -> dict[str, str]:
    return {
        m["name"].lower().replace("_", "-"): m["version"]
        for m in re.finditer(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>\S+)", text, re.MULTILINE)
    }


def _prefect_pin() -> str:
    (pin,) = re.findall(r'"prefect==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    return str(pin)


def test_the_dockerfile_install_steps_run_in_a_clean_virtualenv(image: Image) -> None:
    """Both pip RUN lines ran, and exited 0: the hashed dependencies, then the project with no index
    and `pip check`."""
    assert any("--require-hashes" in command for command in image.ran), image.ran
    assert any("--no-index" in command and "pip check" in command for command in image.ran), image.ran
    assert image.user == "10001:10001"


def test_the_image_holds_exactly_the_hashed_requirements_and_the_project(image: Image) -> None:
    listed = image.run("python", "-m", "pip", "list", "--format=json")
    assert listed.returncode == 0, _tail(listed)
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed.stdout)}
    expected = _pins(HASHED.read_text()) | {"mssql-auth-rotation": "0.1.0"}
    installed.pop("pip")  # the base image's own
    assert installed == expected


def test_its_cmd_prints_the_pinned_prefect_version(image: Image) -> None:
    assert image.cmd == ["prefect", "version"]
    result = image.run(*image.cmd)
    assert result.returncode == 0, _tail(result)
    assert re.search(rf"^Version:\s+{re.escape(_prefect_pin())}$", result.stdout, re.MULTILINE), result.stdout


def test_the_flows_import_from_the_workdir_and_as_installed(image: Image) -> None:
    where = "import flows.rotate_auth, flows.rotate_fleet, rotation.bridge; print(flows.rotate_auth.__file__)"
    from_workdir = image.run("python", "-c", where)
    assert from_workdir.returncode == 0, _tail(from_workdir)
    assert Path(from_workdir.stdout.strip()) == image.workdir / "flows" / "rotate_auth.py"
    elsewhere = image.run("python", "-c", where, cwd=image.path("/root"))
    assert elsewhere.returncode == 0, _tail(elsewhere)
    assert Path(elsewhere.stdout.strip()).is_relative_to(image.venv / "lib")


def test_the_worker_can_start_with_the_kubernetes_type(image: Image) -> None:
    """`prefect worker start --type kubernetes` finds its worker class the way the CLI looks it up
    (prefect.cli._worker_utils._load_worker_class: collections loaded, then lookup_type)."""
    helped = image.run("prefect", "worker", "start", "--help")
    assert helped.returncode == 0, _tail(helped)
    assert "--type" in helped.stdout
    lookup = (
        "from prefect.plugins import load_prefect_collections\n"
        "from prefect.utilities.dispatch import lookup_type\n"
        "from prefect.workers.base import BaseWorker\n"
        "load_prefect_collections()\n"
        "cls = lookup_type(BaseWorker, 'kubernetes')\n"
        "print(f'{cls.__module__}.{cls.__qualname__}')\n"
    )
    found = image.run("python", "-c", lookup)
    assert found.returncode == 0, _tail(found)
    assert found.stdout.strip() == "prefect_kubernetes.worker.KubernetesWorker"


def test_image_requirements_are_what_the_generator_makes_of_the_lock_and_pyproject() -> None:
    """scripts/image_requirements.py --check resolves the project and the image's extras against
    requirements.lock again (PyPI) and compares names and versions with the committed file."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image_requirements.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, _tail(result)
