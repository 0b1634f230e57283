"""Validation during training: which epochs are scored, and the score of a perfect model is 1."""

from __future__ import annotations

import numpy as np
import pytest
import synthcoco
import torch
from pycocotools.coco import COCO

from cocoseg.common.params import TrainParams
from cocoseg.train.validate import due, score, val_set


@pytest.mark.parametrize(
    ("eval_every", "epochs", "scored"), [(1, 3, [1, 2, 3]), (2, 5, [2, 4, 5]), (0, 4, [])]
)
def test_every_nth_epoch_and_the_last_are_scored(eval_every, epochs, scored):
    p = TrainParams(eval_every=eval_every, epochs=epochs)
    assert [e for e in range(1, epochs + 1) if due(e, p)] == scored


class GroundTruthModel(torch.nn.Module):
    """Answers each image with its own ground truth (boxes, labels, full-confidence masks)."""

    def __init__(self, gt: COCO, image_ids: list[int]) -> None:
        super().__init__()
        self.gt, self.queue = gt, list(image_ids)
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a module with a device

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            anns = [a for a in self.gt.imgToAnns[self.queue.pop(0)] if not a["iscrowd"]]
            masks = [self.gt.annToMask(a).astype(np.float32) for a in anns]
            outputs.append({
                "boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                                       (a["bbox"] for a in anns)]).reshape(-1, 4).float(),
                "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                "scores": torch.ones(len(anns)),
                "masks": torch.from_numpy(np.stack(masks)[:, None]) if masks
                else torch.zeros((0, 1, *image.shape[-2:])),
            })  # fmt: skip
        return outputs


def test_a_model_answering_the_ground_truth_scores_ap_1_and_is_left_training(tmp_path):
    subset = synthcoco.make_subset(tmp_path / "subset", n_train=1, n_val=6, size=(64, 80))
    val = val_set(subset)
    items, gt = val
    model = GroundTruthModel(gt, [image_id for image_id, _, _ in items])
    row = score(model, val, 3, TrainParams(num_workers=0, amp=False), torch.device("cpu"))
    assert not model.queue and model.training
    assert row["epoch"] == 3 and "val_seconds" in row
    assert [row[k] for k in ("segm_AP", "segm_AP50", "bbox_AP", "bbox_AP50")] == [1.0] * 4
