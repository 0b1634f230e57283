"""The stage runner: how a run ends (one line, its exit code), and PyTorch started with
transparent huge pages for its large CPU tensors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from paramfiles import write_params

from cocoseg.core import cli
from cocoseg.core.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MODE = re.search(r"\[(\w+)\]", THP_MODE.read_text()).group(1) if THP_MODE.exists() else "never"

PROBE = """
import re, sys
from cocoseg.core.cli import run_stage, stage_parser

def main(args, params):
    import torch
    block = torch.zeros(64 * 2**20, dtype=torch.uint8)  # 64 MB, every page touched
    rollup = open("/proc/self/smaps_rollup").read()
    print(int(re.search(r"AnonHugePages:\\s+(\\d+) kB", rollup).group(1)) // 1024, "MB")

sys.exit(run_stage(main, stage_parser("probe"), ["--params", sys.argv[1]]))
"""


def huge_page_mb(params: Path, **env: str) -> int:
    """MB of huge pages a stage process holds after allocating a 64 MB tensor."""
    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | env
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE), str(params)],
        cwd=ROOT, env=environ, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout.split()[-2])


@pytest.mark.skipif(MODE == "never", reason="transparent huge pages are off on this machine")
def test_a_stage_backs_large_tensors_with_huge_pages(tmp_path):
    params = write_params(tmp_path / "params.yaml", {})
    assert huge_page_mb(params) >= 32
    if MODE == "madvise":  # only asked-for regions get huge pages: the setting is what asks
        assert huge_page_mb(params, THP_MEM_ALLOC_ENABLE="0") < 32


def test_ctrl_c_and_sigterm_end_in_one_line_with_their_codes(monkeypatch):
    monkeypatch.setattr(cli, "stop_requested", cli.threading.Event())
    line, code = cli.failure_line(KeyboardInterrupt())
    assert code == 130 and line.startswith("interrupted: ")
    assert cli.failure_line(DataError("bad.jpg: does not decode")) == (
        "error: bad.jpg: does not decode",
        2,
    )
    assert cli.failure_line(ValueError("a bug")) is None  # keeps its traceback
    cli.stop_requested.set()  # SIGTERM arrived: whatever it unwound, the ending is SIGTERM's
    for err in (KeyboardInterrupt(), ValueError("raised while unwinding")):
        line, code = cli.failure_line(err)
        assert code == 143 and line.startswith("terminated (SIGTERM): ")
