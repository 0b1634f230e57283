"""File writing: outputs get the user's normal file mode; one CSV writer for every table."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cocoseg.common.io import write_csv

PROJECT = Path(__file__).resolve().parents[2]
WRITE_BOTH = (
    "import sys\n"
    "from cocoseg.common.io import write_bytes, write_json\n"
    "write_json(sys.argv[1] + '/metrics.json', {'a': 1})\n"
    "write_bytes(sys.argv[1] + '/model.pt', b'x')\n"
    "write_bytes(sys.argv[1] + '/model.pt', b'y')  # replacing a file, too\n"
)


@pytest.mark.parametrize(
    ("umask", "mode"),
    [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
    ids=["umask022", "umask077", "umask002"],
)
def test_written_files_get_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mode):
    subprocess.run(
        [sys.executable, "-c", WRITE_BOTH, str(tmp_path)], cwd=PROJECT, umask=umask, check=True
    )
    for name in ("metrics.json", "model.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model.pt"]


def test_csv_columns_pick_and_order_keys_and_none_is_an_empty_cell(tmp_path):
    rows = [{"b": 1.5, "a": "x, y", "extra": 9}, {"a": None, "b": 2}]
    write_csv(tmp_path / "t.csv", rows, columns=("a", "b"))
    assert (tmp_path / "t.csv").read_text() == 'a,b\n"x, y",1.5\n,2\n'


def test_csv_header_comes_from_the_first_row_without_columns(tmp_path):
    write_csv(tmp_path / "t.csv", [{"n": 1, "v": 0.25}])
    assert (tmp_path / "t.csv").read_bytes() == b"n,v\n1,0.25\n"
    write_csv(tmp_path / "empty.csv", [], columns=("n", "v"))
    assert (tmp_path / "empty.csv").read_bytes() == b"n,v\n"
