"""Throw-away git+DVC repositories holding a copy of the project, for pipeline tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from paramfiles import write_params

PROJECT = Path(__file__).resolve().parents[1]
# .gitignore as users have it: without it `git add -A` copies checkpoints into git (15 s each).
COPIED = ["cocoseg", "stages", "dvc.yaml", "params.yaml", "pyproject.toml", ".gitignore"]


def dvc_env() -> dict[str, str]:
    """Environment for DVC subprocesses: this venv's python first, no telemetry, no updater."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_IGNORE_UPDATER"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = f"{PROJECT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "cocoseg tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@cocoseg.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "cocoseg tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@cocoseg.invalid")
    return env


def run(
    repo: Path,
    *cmd: str,
    check: bool = True,
    timeout: float = 1200,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command in repo (`env` added to DVC's); on failure the assertion shows its output."""
    proc = subprocess.run(
        list(cmd), cwd=repo, env={**dvc_env(), **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc


def dvc(
    repo: Path, *args: str, check: bool = True, timeout: float = 1200
) -> subprocess.CompletedProcess[str]:
    """Run `dvc ARGS` in repo with this interpreter's DVC."""
    return run(repo, sys.executable, "-m", "dvc", *args, check=check, timeout=timeout)


def make_dvc_repo(path: Path, params: dict[str, Any] | None = None) -> Path:
    """Copy the project into `path`, apply param overrides, git init + dvc init + commit."""
    path.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = PROJECT / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, path / name)
    write_params(path / "params.yaml", params)  # the recipe, not the user's params.yaml
    run(path, "git", "init", "-q", "-b", "main")
    run(path, "git", "config", "user.email", "tests@cocoseg.invalid")
    run(path, "git", "config", "user.name", "cocoseg tests")
    dvc(path, "init", "-q")
    dvc(path, "config", "core.analytics", "false")
    dvc(path, "config", "core.autostage", "true")
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-q", "-m", "project under test")
    return path


def stages_ran(output: str) -> set[str]:
    """Names of the stages a `dvc repro`/`dvc exp run` log says it ran."""
    return {
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    }
