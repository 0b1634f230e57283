"""Params for tests: the recipe (the Struct defaults) with a test's overrides.

Never the repository's params.yaml: users change it (`dvc exp run -S` writes it, `dvc exp
apply` too), and a test must not fail because a user committed an experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cocoseg.common.params import Params, to_dict


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge overrides into base section by section (a copy; base is left alone)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def recipe(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every section and key with the recipe's values, overridden where asked."""
    return deep_update(to_dict(Params()), overrides or {})


def write_params(path: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A params.yaml at path holding `recipe(overrides)`; returns path."""
    path.write_text(yaml.safe_dump(recipe(overrides), sort_keys=False))
    return path
