"""A file as the last commit (git HEAD) holds it: `dvc exp run -S` writes its values into
params.yaml before the run, so a value the run refuses stays there for the next try; quoting
HEAD's value says what to go back to."""

from __future__ import annotations

import subprocess
from pathlib import Path

GIT_TIMEOUT = 5.0  # seconds; git show of one small file takes milliseconds


def committed_text(path: str | Path) -> str | None:
    """The file's text in HEAD of the git repository it lies in; None where there is no git, no
    repository, no commit, or HEAD lacks the file (nothing to compare with)."""
    path = Path(path)
    try:
        shown = subprocess.run(
            ["git", "show", f"HEAD:./{path.name}"], cwd=path.parent, capture_output=True,
            timeout=GIT_TIMEOUT, check=False,
        )  # fmt: skip
        return shown.stdout.decode("utf-8") if shown.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
