"""From-scratch training for the learn tests: a few dozen steps on two tiny synthetic images,
the model saved and loaded back as infer and predict load it, and the best mask per shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import synthcoco
import torch

from cocoseg.common.io import atomic_write
from cocoseg.common.params import TrainParams, to_dict
from cocoseg.modeling.records import load_trained_model, model_record
from cocoseg.train.dataset import class_names, coco_dataset, train_loader
from cocoseg.train.engine import make_optimizer, train_one_epoch, training_model
from cocoseg.train.runtime import Context
from cocoseg.train.transforms import build_transforms

# Fewer sampled RoIs than torchvision's defaults: the same model, a third of the CPU time.
FEW_RPN_ROIS = {"rpn_batch_size_per_image": 64, "rpn_post_nms_top_n_train": 300}
MASK_IOU_BAR = 0.6  # mean over ground-truth shapes of the best same-class predicted mask's IoU


def learn_shapes(
    tmp_path: Path, recipe: TrainParams, model_kwargs: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, Any, Path, list[float]]:
    """Train `recipe` (one step per epoch) on two 64 px images with three shapes, from scratch;
    return the model reloaded from its model.pt, the dataset, the subset and the step losses."""
    torch.manual_seed(0)
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=2, size=(64, 64), seed=1)
    dataset = coco_dataset(subset, "train", build_transforms("none"))
    classes = class_names(subset / "annotations" / "train.json")
    ctx = Context(torch.device("cpu"))
    model = training_model(recipe, classes, ctx.device, model_kwargs=model_kwargs)
    loader = train_loader(dataset, recipe)
    steps = [len(loader)] * recipe.epochs
    optimizer, scheduler, scaler = make_optimizer(model, recipe, steps, ctx.device)
    losses = [
        row["loss"]
        for epoch in range(1, recipe.epochs + 1)
        for row in train_one_epoch(model, loader, optimizer, scheduler, scaler, epoch, recipe, ctx)[
            0
        ]
    ]
    path = tmp_path / "model.pt"
    with atomic_write(path) as f:  # through the saved file, as infer and predict load it
        record = model_record(model, classes, recipe.arch, 64, 64, to_dict(recipe))
        torch.save(record, f)
    return load_trained_model(path)[0], dataset, subset, losses


def loss_drop(losses: list[float]) -> tuple[float, float]:
    """Mean loss of the first and of the last five steps."""
    return float(np.mean(losses[:5])), float(np.mean(losses[-5:]))


def best_mask_ious(model: torch.nn.Module, dataset: Any, score: float = 0.5) -> list[float]:
    """For each ground-truth shape, the IoU of the best predicted mask of its class."""
    ious = []
    model.eval()
    with torch.no_grad():
        for image, target in dataset:
            pred = model([image])[0]
            keep = pred["scores"] >= score
            masks, labels = pred["masks"][keep, 0] >= 0.5, pred["labels"][keep]
            for gt, label in zip(target["masks"].bool(), target["labels"], strict=True):
                same = masks[labels == label]
                inter = (same & gt).flatten(1).sum(1)
                union = (same | gt).flatten(1).sum(1)
                ious.append(float((inter / union).max()) if len(same) else 0.0)
    return ious
