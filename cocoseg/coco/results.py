"""The class names a COCO results file was made for, recorded beside it (`<stem>.classes.json`):
category ids alone would let evaluate score predictions made for another class order."""

from __future__ import annotations

from pathlib import Path

import msgspec

from cocoseg.common.errors import DataError
from cocoseg.common.io import read_json, write_json


def classes_path(predictions: str | Path) -> Path:
    """Where the class names of a predictions file are recorded: `<stem>.classes.json` beside it."""
    predictions = Path(predictions)
    return predictions.with_name(f"{predictions.stem}.classes.json")


class RecordedClasses(msgspec.Struct):
    """The class names of ids 1..K a predictions file was made for."""

    classes: list[str]


def record_classes(predictions: str | Path, classes: list[str]) -> None:
    """Write the class names beside a predictions file (`classes_path`)."""
    write_json(classes_path(predictions), msgspec.to_builtins(RecordedClasses(list(classes))))


def recorded_classes(predictions: str | Path) -> list[str] | None:
    """The class names recorded beside a predictions file, None where none are; any other content
    raises DataError naming the file."""
    path = classes_path(predictions)
    if not path.exists():
        return None
    try:
        return msgspec.convert(read_json(path), RecordedClasses).classes
    except msgspec.ValidationError as err:
        raise DataError(f'{path}: expected {{"classes": [names]}}: {err}') from None
