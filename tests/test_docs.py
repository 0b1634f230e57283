"""README and docs/ cannot go stale: links and paths resolve, every shell command is run by a
named test or says why not, and docs/params.md is the params schema, key for key."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
import pytest
import yaml

from cocoseg.common.params import Params

PROJECT = Path(__file__).resolve().parents[1]
PAGES = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)")
PROJECT_PATH = re.compile(r"`(?P<path>(?:cocoseg|stages|tests|benchmarks|docs)/[\w./-]*)`")
FENCE = re.compile(r"^```bash\n(?P<body>.*?)^```", re.M | re.S)
MARKER = re.compile(r"<!-- (?:run by (?P<tests>[^>]+)|not run: (?P<why>[^>]+)) -->\s*$")
TEST_REF = re.compile(r"(?P<file>tests/[\w/]+\.py)::(?P<name>\w+)")


def page_id(page: Path) -> str:
    return page.relative_to(PROJECT).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page):
    text = page.read_text()
    for found in LINK.finditer(text):
        target = found["target"]
        if "://" not in target and not target.startswith("mailto:"):
            assert (page.parent / target).exists(), f"{page_id(page)}: dead link {target}"


@pytest.mark.parametrize(
    "page", [*PAGES, PROJECT / "params.yaml", PROJECT / "dvc.yaml"], ids=page_id
)
def test_every_project_path_named_exists(page):
    for found in PROJECT_PATH.finditer(page.read_text()):
        path = found["path"].rstrip(".")
        assert (PROJECT / path).exists(), f"{page_id(page)} names {path}, which does not exist"


def commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blanks left out."""
    joined = body.replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def verbs(command: str) -> list[str]:
    """The words that say what a command does (`dvc exp run`, `stages.predict`), up to the
    first option or argument."""
    words = []
    for word in command.split("&&")[0].split()[1:]:
        if word.startswith("-") and word != "-m":
            break
        if word != "-m" and not re.search(r"[=/~<'\"]", word):
            words.append(word)
    return words[:2]


def blocks() -> list[tuple[str, str, str]]:
    """(page, marker line, block body) of every bash block in README and docs."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in FENCE.finditer(text):
            before = text[: block.start()].rstrip("\n").splitlines()
            found.append((page_id(page), before[-1] if before else "", block["body"]))
    return found


@pytest.mark.parametrize("page, marker, body", blocks(), ids=lambda v: str(v)[:40])
def test_every_command_block_is_run_by_a_named_test_or_says_why_not(page, marker, body):
    mark = MARKER.search(marker)
    assert mark, f"{page}: a bash block lacks <!-- run by tests/...::name --> or <!-- not run: -->"
    if mark["why"]:
        assert len(mark["why"].split()) >= 3, f"{page}: say why the block is not run"
        return
    refs = list(TEST_REF.finditer(mark["tests"]))
    assert refs, f"{page}: {mark['tests']!r} names no test"
    sources = ""
    for ref in refs:
        source = (PROJECT / ref["file"]).read_text()
        assert f"def {ref['name']}(" in source, f"{page}: {ref[0]} does not exist"
        sources += source
    for command in commands(body):
        for verb in verbs(command):
            assert verb in sources, f"{page}: `{command}` ({verb}) is not in {mark['tests']}"


def yaml_value(value: typing.Any) -> str:
    """A default as params.yaml's flow style writes it."""
    return (
        yaml.safe_dump(value, default_flow_style=True, width=1000)
        .strip()
        .removesuffix("...")
        .strip()
    )


def params_rows() -> dict[str, list[str]]:
    """docs/params.md's table rows by key: the cells after the key."""
    rows: dict[str, list[str]] = {}
    for line in (PROJECT / "docs" / "params.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and "." in cells[0]:
            key = cells[0].strip("`")
            assert key not in rows, f"docs/params.md lists {key} twice"
            rows[key] = cells[1:]
    return rows


def test_the_params_page_lists_every_key_once_with_its_default_and_choices():
    rows = params_rows()
    defaults = msgspec.to_builtins(Params())
    keys = {f"{s}.{k}" for s, section in defaults.items() for k in section}
    assert set(rows) == keys, (
        f"missing {sorted(keys - set(rows))}, extra {sorted(set(rows) - keys)}"
    )
    hints = {s: typing.get_type_hints(type(getattr(Params(), s))) for s in defaults}
    for key, (default, *about) in rows.items():
        section, name = key.split(".")
        assert default.strip("`") == yaml_value(defaults[section][name]).strip("'"), key
        kind = hints[section][name]
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else ()
        for choice in choices:
            assert f"`{choice}`" in " ".join([default, *about]), f"{key}: choice {choice} unsaid"
