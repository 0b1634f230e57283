"""Fixtures shared by the suite: synthetic COCO data and the real sample when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import synthcoco

COCO_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "coco-sample"


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    """The real COCO-2017 sample beside the checkout; tests needing it skip where absent."""
    if not (COCO_SAMPLE / "annotations" / "instances_train2017.json").exists():
        where = f"real COCO sample not found at {COCO_SAMPLE}"
        pytest.skip(f"{where} (it lies there on the project's own machines only)")
    return COCO_SAMPLE


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A COCO-2017-shaped folder with synthetic images (shared, do not modify)."""
    return synthcoco.make_coco_root(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="session")
def synthetic_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ready data/subset layout with classes 1..4 (shared, do not modify)."""
    return synthcoco.make_subset(tmp_path_factory.mktemp("subset"))
