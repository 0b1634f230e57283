"""What README and pyproject.toml say about Python is what the pinned packages accept."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet

PROJECT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    """name -> version of every `name==version` line in requirements.txt."""
    found = {}
    for line in (PROJECT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            found[match[1]] = match[2]
    return found


def stated_minimum() -> str:
    """The lowest Python pyproject.toml admits (its requires-python is '>=X.Y')."""
    spec = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=(3\.\d+)", spec)
    assert match, f"requires-python should be a plain lower bound, not {spec!r}"
    return match[1]


def test_every_pin_installs_on_the_stated_python_and_one_needs_it():
    minimum = stated_minimum()
    below = f"3.{int(minimum.split('.')[1]) - 1}"
    accepts = {}
    for name, version in pins().items():
        meta = metadata(name)
        assert meta["Version"] == version, f"{name} {meta['Version']} installed, {version} pinned"
        accepts[name] = SpecifierSet(meta["Requires-Python"] or "")
    refuse_min = [n for n, spec in accepts.items() if not spec.contains(minimum)]
    assert not refuse_min, f"pins that do not install on Python {minimum}: {refuse_min}"
    assert any(not spec.contains(below) for spec in accepts.values()), (
        f"every pin installs on Python {below}: the stated minimum {minimum} is too high"
    )


def test_the_readme_states_the_same_python():
    readme = (PROJECT / "README.md").read_text()
    assert f"Python {stated_minimum()} or newer" in readme
    assert "3.10+" not in readme
