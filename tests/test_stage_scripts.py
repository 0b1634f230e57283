"""Stage scripts as DVC sees them: deps list every cocoseg folder they import; layers point down;
--help is light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def module_files(name: str) -> list[str]:
    """The files Python runs to import a dotted cocoseg name: each package's __init__.py too."""
    parts, files = name.split("."), []
    for depth in range(1, len(parts) + 1):
        base = PROJECT.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
        elif depth == len(parts) and base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
    return [f.relative_to(PROJECT).as_posix() for f in files]


def imported_modules(path: Path) -> set[str]:
    """cocoseg files a file imports anywhere (top level or inside functions), as paths."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "cocoseg":
                found.update(module_files(name))
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


def dependency(module: str) -> str:
    """What dvc.yaml lists for an imported file: its folder under cocoseg/ (a layer or a stage's
    own), or cocoseg/__init__.py itself."""
    parts = module.split("/")
    return module if len(parts) == 2 else "/".join(parts[:2])


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_list_exactly_the_cocoseg_folders_the_stage_imports(stage):
    script = f"stages/{stage}.py"
    # -m: the stage imports the cocoseg beside it (a queued experiment's own copy), not
    # whichever one is installed.
    assert STAGES[stage]["cmd"] == f"python -m stages.{stage}"
    listed = {d for d in STAGES[stage]["deps"] if isinstance(d, str) and d.startswith("cocoseg")}
    needed = {dependency(module) for module in transitive_imports(PROJECT / script)}
    assert script in STAGES[stage]["deps"]
    assert listed == needed, f"missing: {sorted(needed - listed)}, extra: {sorted(listed - needed)}"


def test_no_stage_depends_on_a_layer_it_has_no_use_for():
    """The point of folder deps: drawing code leaves train, model code leaves eda up to date."""
    deps = {stage: set(STAGES[stage]["deps"]) for stage in STAGES}
    assert "cocoseg/viz" not in deps["train"] | deps["infer"]
    assert "cocoseg/modeling" not in deps["eda"] | deps["evaluate"] | deps["subset"]
    assert "cocoseg/eda" not in deps["subset"] | deps["download"]


def test_the_import_walk_sees_imports_inside_functions_and_parent_packages():
    # placing.py imports cocoseg.common.http inside a function (only when downloading).
    found = imported_modules(PROJECT / "cocoseg" / "subset" / "placing.py")
    assert {"cocoseg/common/http.py", "cocoseg/__init__.py", "cocoseg/common/__init__.py"} <= found


# The layers, lowest first: a layer imports only layers of a lower rank (and itself).
LAYERS = {"common": 0, "coco": 1, "viz": 1, "modeling": 2}
STAGE_FOLDERS = ("download", "subset", "eda", "train", "evaluate", "predict")


def test_every_folder_is_a_layer_or_a_stage_folder():
    folders = {p.name for p in (PROJECT / "cocoseg").iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS) | set(STAGE_FOLDERS)


@pytest.mark.parametrize("folder", [*LAYERS, *STAGE_FOLDERS])
def test_a_folder_imports_only_lower_layers_and_itself(folder):
    """A layer imports lower layers; a stage folder imports layers, never a sibling stage."""
    rank = LAYERS.get(folder, max(LAYERS.values()) + 1)
    allowed = {"cocoseg/__init__.py", f"cocoseg/{folder}"}
    allowed |= {f"cocoseg/{layer}" for layer, below in LAYERS.items() if below < rank}
    for module in sorted((PROJECT / "cocoseg" / folder).glob("*.py")):
        for imported in imported_modules(module):
            assert dependency(imported) in allowed, f"{folder}/{module.name} imports {imported}"


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
