"""DeepLabV3+ through the stages: train (with val mAP), infer, predict; it learns from scratch."""

from __future__ import annotations

import json

import pytest
import synthcoco
from learning import learn_shapes
from pycocotools.coco import COCO

from cocoseg.coco.cocoeval import coco_from_dataset
from cocoseg.coco.inputs import subset_images
from cocoseg.common.io import read_json
from cocoseg.common.params import EvaluateParams, PredictParams, TrainParams
from cocoseg.evaluate.metrics import check_predictions
from cocoseg.evaluate.semantic import semantic_metrics
from cocoseg.modeling.infer import infer_val
from cocoseg.modeling.inference import predict_images
from cocoseg.modeling.records import load_record
from cocoseg.predict.outputs import predict
from cocoseg.train.engine import train

ARCH = "deeplabv3plus_resnet50"
PIXEL_IOU_BAR = 0.6  # semantic mIoU (the classes predicted or present), on the images trained on


def recipe(**changes) -> TrainParams:
    """A from-scratch DeepLab recipe at 64 px on the CPU."""
    base = dict(
        arch=ARCH, weights="none", batch_size=2, num_workers=0, min_size=64, max_size=64,
        augment="none", warmup_iters=5, clip_grad_norm=10.0, amp=False, device="cpu", seed=0,
    )  # fmt: skip
    return TrainParams(**{**base, **changes})


def test_train_stage_scores_val_then_infer_and_predict_write_coco_results(tmp_path):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=2, n_val=2, n_test=2, size=(64, 80))
    out, reports = tmp_path / "models", tmp_path / "reports"
    model_path = train(recipe(epochs=1, eval_every=1), subset, out, reports)

    record = load_record(model_path)
    assert record["arch"] == ARCH and record["epoch"] == 1
    assert record["val"]["epoch"] == 1 and "segm_AP" in record["val"]
    epochs = json.loads((reports / "live" / "plots" / "custom" / "epochs.json").read_text())
    assert epochs[0]["loss_classifier"] is None  # a part DeepLab has not: null in the charts
    assert epochs[0]["loss"] == pytest.approx(epochs[0]["loss_mask"])

    settings = EvaluateParams(device="cpu", num_workers=0)
    preds_file = tmp_path / "eval" / "predictions.json"
    results = infer_val(model_path, subset, preds_file, settings)
    gt = COCO(str(subset / "annotations" / "val.json"))
    assert len(gt.loadRes(str(preds_file)).anns) == len(results) > 0  # COCO reads it back
    images, classes = subset_images(subset, "test")
    kept = predict(
        model_path, images, tmp_path / "test", PredictParams(device="cpu", score_threshold=0.0),
        name="test", expect_classes=classes, progress=False,
    )  # fmt: skip
    assert json.loads((tmp_path / "test" / "test.json").read_text()) == kept != []
    assert {r["category_name"] for r in kept} <= set(classes)
    assert len(list((tmp_path / "test" / "overlays").glob("*.png"))) == len(images)


@pytest.mark.slow
def test_from_random_weights_deeplab_finds_the_shapes_pixel_by_pixel(tmp_path):
    """40 steps on two 64 px images (three shapes), from scratch, then their pixels again."""
    model, _, subset, _ = learn_shapes(tmp_path, recipe(epochs=40, lr=0.1, schedule="cosine"))
    ann_file = subset / "annotations" / "train.json"
    gt = coco_from_dataset(read_json(ann_file))
    items = [image.item for image in subset_images(subset, "train")[0]]
    preds = predict_images(model, items, device="cpu", progress=False)
    m = semantic_metrics(gt, check_predictions(preds, gt, "train"), score_threshold=0.5)
    print(
        "pixel IoU per class:",
        {k: v["iou"] and round(v["iou"], 2) for k, v in m["per_class"].items()},
    )
    assert m["mIoU"] >= PIXEL_IOU_BAR
