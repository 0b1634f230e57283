"""The stage runner: how a run ends (one line, its exit code), and PyTorch started with
transparent huge pages for its large CPU tensors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from paramfiles import write_params

from cocoseg.common import cli
from cocoseg.common.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
THP = Path("/sys/kernel/mm/transparent_hugepage")

PROBE = """
import re, sys
from cocoseg.common.cli import run_stage, stage_parser

def main(args, params):
    import torch
    block = torch.zeros(64 * 2**20, dtype=torch.uint8)  # 64 MB
    address = block.data_ptr()
    for region in re.finditer(r"^([0-9a-f]+)-([0-9a-f]+) .*?^VmFlags:(.*?)$",
                              open("/proc/self/smaps").read(), re.M | re.S):
        if int(region[1], 16) <= address < int(region[2], 16):
            print("advised" if "hg" in region[3].split() else "not advised")

sys.exit(run_stage(main, stage_parser("probe"), ["--params", sys.argv[1]]))
"""


def tensor_memory_advice(params: Path, **env: str) -> str:
    """Whether a stage process's 64 MB tensor lies in memory advised for huge pages."""
    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | env
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE), str(params)],
        cwd=ROOT, env=environ, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.mark.skipif(not THP.exists(), reason="this kernel has no transparent huge pages")
def test_a_stage_asks_huge_pages_for_large_tensors(tmp_path):
    # The advice (VmFlags "hg") is what the stage controls; how many huge pages the kernel
    # then grants depends on its free contiguous memory (a busy CI machine gave 26 of 64 MB).
    params = write_params(tmp_path / "params.yaml", {})
    assert tensor_memory_advice(params) == "advised"
    assert tensor_memory_advice(params, THP_MEM_ALLOC_ENABLE="0") == "not advised"


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
