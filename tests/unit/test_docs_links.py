"""The README stays a five-minute read and every relative link of the documentation resolves.

Checked: README.md, docs/*.md, deployments/README.md and every markdown file they link to. A link is an
inline ``[text](target)`` (or ``![alt](target)``) outside fenced code blocks and code spans; http(s),
mailto and other URLs with a scheme are not checked. The target must exist, and an anchor
(``path#anchor``, or ``#anchor`` in the same file) must be the slug of one of the target's headings under
GitHub's rules (``github_slug``; a repeated heading gets ``-1``, ``-2`` ...; lines inside fenced code
blocks are not headings).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_MAX_BYTES = 12288
# The README's two commands (CI runs `make test`); their lines must stay exactly these commands.
COMMANDS = ("make demo", "make test")

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s()<>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: a link's text only, lowercase, every character other than a
    letter, a digit, a space, a hyphen or an underscore dropped, each space a hyphen."""
    text = INLINE_LINK.sub(r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def outside_fences(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line that is not inside a fenced code block (nor a fence)."""
    fence = ""
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = ""
            continue
        if match:
            fence = match.group(1)
            continue
        yield number, line


def anchors(text: str) -> set[str]:
    """The anchors of a markdown text's headings, numbered as GitHub numbers repeated ones."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in outside_fences(text):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(text: str) -> list[str]:
    """The targets of the inline links of a markdown text (not in code blocks or code spans)."""
    prose = "\n".join(line for _, line in outside_fences(text))
    prose = CODE_SPAN.sub("code", prose)
    return [match.group(1) for match in LINK.finditer(prose)]


def checked_files() -> list[Path]:
    """README.md, docs/*.md, deployments/README.md, and every markdown file linked from them."""
    todo = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "deployments" / "README.md"]
    done: list[Path] = []
    while todo:
        path = todo.pop(0).resolve()
        if path in done or not path.is_file():
            continue
        done.append(path)
        for target in links(path.read_text()):
            file_part = target.partition("#")[0]
            if file_part.endswith(".md") and not SCHEME.match(file_part):
                todo.append(path.parent / file_part)
    return done


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path.read_text()):
        if SCHEME.match(target) or target.startswith("//"):
            continue
        file_part, _, anchor = target.partition("#")
        where = (path.parent / file_part).resolve() if file_part else path
        name = f"{path.relative_to(ROOT)}: ({target})"
        if not file_part and not anchor:
            problems.append(f"{name}: empty link")
        elif not where.exists():
            problems.append(f"{name}: {where} does not exist")
        elif not where.is_relative_to(ROOT):
            problems.append(f"{name}: outside the repository")
        elif anchor:
            if where.suffix != ".md" or not where.is_file():
                problems.append(f"{name}: an anchor into a file that is not markdown")
            elif anchor not in anchors(where.read_text()):
                problems.append(f"{name}: no heading of {where.relative_to(ROOT)} has the anchor")
    return problems


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Prefect's API", "prefects-api"),
        (
            "What applications see during a rotation (`benchmarks/availability.py`, issue 16)",
            "what-applications-see-during-a-rotation-benchmarksavailabilitypy-issue-16",
        ),
        (
            "One rotation (`benchmarks/rotation_overhead.py`, `make benchmark`)",
            "one-rotation-benchmarksrotation_overheadpy-make-benchmark",
        ),
        ("TLS with pymssql 2.4.6 (FreeTDS 1.5.19): what", "tls-with-pymssql-246-freetds-1519-what"),
        ("A. with / without a certificate", "a-with--without-a-certificate"),
        ("What else pymssql offers *(source)*", "what-else-pymssql-offers-source"),
        ("See [the lock](rotation.md#the-lock), then", "see-the-lock-then"),
        ("  Spaces, commas, and  twice  ", "spaces-commas-and--twice"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_repeated_headings_are_numbered_and_headings_in_code_blocks_do_not_count() -> None:
    text = "# Title\n## Setup ##\n## Setup\n```bash\n# Setup\n## Not a heading\n```\n## Setup\n#nospace\n"
    assert anchors(text) == {"title", "setup", "setup-1", "setup-2"}


def test_links_in_code_blocks_and_code_spans_are_not_links() -> None:
    text = (
        "[a](a.md) and [`b`](b.md#x) and ![c](c.png 'no') `[d](d.md)`\n"
        "```\n[e](e.md)\n```\n"
        '[f](https://example.com/f) [g](#g "title") [h\nsplit](h.md)\n'
    )
    assert links(text) == ["a.md", "b.md#x", "https://example.com/f", "#g", "h.md"]


def test_every_relative_link_resolves_to_a_file_and_a_heading() -> None:
    files = checked_files()
    assert README.resolve() in files
    assert (ROOT / "docs" / "README.md").resolve() in files
    problems = [problem for path in files for problem in broken_links(path)]
    assert problems == []


def test_the_readme_is_at_most_12_kib() -> None:
    assert len(README.read_bytes()) <= README_MAX_BYTES


def test_the_two_commands_come_right_after_the_intro() -> None:
    """`make demo` and `make test` are in a code block of the intro or of the README's first section."""
    text = README.read_text()
    lines = text.splitlines()
    sections = [number for number, line in outside_fences(text) if line.startswith("## ")]
    end = sections[1] - 1 if len(sections) > 1 else len(lines)
    prose = {number for number, _ in outside_fences(text)}
    commands = [
        line.partition("#")[0].strip()
        for number, line in enumerate(lines[:end], start=1)
        if number not in prose and not FENCE.match(line)
    ]
    for command in COMMANDS:
        assert command in commands, f"{command!r} is not in a code block before the second section"
    makefile = (ROOT / "Makefile").read_text()
    for command in COMMANDS:
        assert re.search(rf"^{command.split()[1]}:", makefile, re.MULTILINE), command
