"""File writing: one CSV writer for every table."""

from __future__ import annotations

from cocoseg.io import write_csv


def test_csv_columns_pick_and_order_keys_and_none_is_an_empty_cell(tmp_path):
    rows = [{"b": 1.5, "a": "x, y", "extra": 9}, {"a": None, "b": 2}]
    write_csv(tmp_path / "t.csv", rows, columns=("a", "b"))
    assert (tmp_path / "t.csv").read_text() == 'a,b\n"x, y",1.5\n,2\n'


def test_csv_header_comes_from_the_first_row_without_columns(tmp_path):
    write_csv(tmp_path / "t.csv", [{"n": 1, "v": 0.25}])
    assert (tmp_path / "t.csv").read_bytes() == b"n,v\n1,0.25\n"
    write_csv(tmp_path / "empty.csv", [], columns=("n", "v"))
    assert (tmp_path / "empty.csv").read_bytes() == b"n,v\n"
