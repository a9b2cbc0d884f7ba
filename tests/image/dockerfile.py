"""deployments/Dockerfile read as its instructions, so that a test can run its install steps as written.

Only what a Dockerfile parser does to the text is done here: comment lines dropped (also inside a
continued instruction, as Docker does), continued lines joined, the instruction word split off. What
the instructions mean is left to the test that runs them (tests/image/test_image_install.py).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deployments" / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    arguments: str  # continued lines joined, as Docker joins them
    line: int  # where it starts in the file, for messages

    def words(self) -> list[str]:
        return shlex.split(self.arguments)


def instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment and empty lines, inside a continued instruction too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(pending).partition(" ")
        out.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    if pending:
        raise ValueError(f"{DOCKERFILE.name}: line {start}: an instruction ends with a line continuation")
    return out


def env_pairs(instruction: Instruction) -> dict[str, str]:
    """`ENV A=1 B="two words"` as a dict (the `ENV key value` form is deprecated and not used here)."""
    pairs = {}
    for word in instruction.words():
        key, equals, value = word.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"{DOCKERFILE.name}: line {instruction.line}: ENV {word!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def python_minor_of_the_base(text: str) -> str:
    """The Python minor version (e.g. "3.11") of the default BASE_IMAGE, from its python:<tag>."""
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    match = re.match(r"python:(\d+\.\d+)[-.@:]", base)
    if not match:
        raise ValueError(f"the base image {base} is not an official python:<version> image")
    return match[1]
