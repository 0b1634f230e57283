"""Stage scripts as DVC sees them: deps list every cocoseg module they import; --help is light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """cocoseg modules a file imports anywhere (top level or inside functions), as paths."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            file = PROJECT / (name.replace(".", "/") + ".py")
            if name.startswith("cocoseg.") and file.is_file():
                found.add(file.relative_to(PROJECT).as_posix())
    return found


def transitive_imports(script: Path) -> set[str]:
    """Every cocoseg module the script needs, directly or through other cocoseg modules."""
    seen: set[str] = set()
    todo = imported_modules(script)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo |= imported_modules(PROJECT / module)
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_list_exactly_the_cocoseg_modules_the_stage_imports(stage):
    script = f"stages/{stage}.py"
    # -m: the stage imports the cocoseg beside it (a queued experiment's own copy), not
    # whichever one is installed.
    assert STAGES[stage]["cmd"] == f"python -m stages.{stage}"
    listed = {d for d in STAGES[stage]["deps"] if isinstance(d, str) and d.startswith("cocoseg/")}
    needed = transitive_imports(PROJECT / script)
    assert script in STAGES[stage]["deps"]
    assert listed == needed, f"missing: {sorted(needed - listed)}, extra: {sorted(listed - needed)}"


def test_the_import_walk_sees_imports_inside_functions():
    # cocoseg/images.py imports cocoseg.download inside a function (only when downloading).
    assert "cocoseg/download.py" in imported_modules(PROJECT / "cocoseg" / "images.py")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_help_parses_arguments_before_loading_torch(stage):
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['stages/{stage}.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path('stages/{stage}.py', run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "heavy = sorted({'torch', 'torchvision', 'matplotlib', 'pycocotools'} & set(sys.modules))\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert "usage:" in proc.stdout and "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_no_file_is_both_a_stage_plot_and_a_top_level_plot():
    dvc_yaml = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    stage_plots = {
        next(iter(p)) if isinstance(p, dict) else p
        for stage in dvc_yaml["stages"].values()
        for p in stage.get("plots", [])
    }
    top_level = set()
    for plot in dvc_yaml["plots"]:
        if isinstance(plot, str):
            top_level.add(plot)
            continue
        (config,) = plot.values()
        y = config.get("y") if isinstance(config, dict) else None
        top_level |= set(y) if isinstance(y, dict) else set(plot)
    assert stage_plots and top_level
    assert not stage_plots & top_level
