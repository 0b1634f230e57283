"""Cascade R-CNN's box heads (Cai & Vasconcelos 2018, as detectron2's cascade_rcnn.py) on
torchvision's RoIHeads: three box stages at rising IoU, each refining the previous stage's
boxes; the mask head as in Mask R-CNN. Outputs and losses keep torchvision's names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops

STAGE_IOUS = (0.5, 0.6, 0.7)  # a box is a stage's positive at this IoU with a ground truth
STAGE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
REPRESENTATION = 1024  # TwoMLPHead's fc6/fc7 width, torchvision's and detectron2's
SMOOTH_L1_BETA = 1 / 9  # torchvision's fastrcnn_loss


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient times `scale` backward (detectron2's): summing the stages'
    losses then trains the shared features as their mean would."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class AgnosticPredictor(nn.Module):
    """Class scores and ONE box delta per RoI (class-agnostic regression, as detectron2's
    cascade), initialised as detectron2 does (std 0.01 and 0.001, zero bias)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeStage(nn.Module):
    """One box stage: its own fc6/fc7 head and predictor, its IoU matcher and box coder."""

    def __init__(
        self, in_channels: int, num_classes: int, iou: float, box_weights: Sequence[float]
    ) -> None:
        super().__init__()
        self.head = TwoMLPHead(in_channels, REPRESENTATION)
        self.predictor = AgnosticPredictor(REPRESENTATION, num_classes)
        self.matcher = det_utils.Matcher(iou, iou, allow_low_quality_matches=False)
        self.box_coder = det_utils.BoxCoder(tuple(box_weights))

    def forward(self, box_features: Tensor) -> tuple[Tensor, Tensor]:
        return self.predictor(self.head(box_features))

    def refine(self, deltas: Tensor, boxes: list[Tensor]) -> list[Tensor]:
        """This stage's boxes from its deltas on its input `boxes`, per image (in float32: under
        AMP the deltas are half, which would round coordinates past 1024 px)."""
        refined = self.box_coder.decode(deltas.float(), [b.float() for b in boxes])
        return list(refined.reshape(-1, 4).split([len(b) for b in boxes]))


def stage_losses(
    logits: Tensor, deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """torchvision's fastrcnn_loss for one delta per RoI: cross entropy, and smooth L1 on the
    positives normalised by the number of RoIs."""
    labels_all, targets = torch.cat(labels), torch.cat(regression_targets)
    positive = torch.where(labels_all > 0)[0]
    box_loss = F.smooth_l1_loss(
        deltas[positive], targets[positive], beta=SMOOTH_L1_BETA, reduction="sum"
    )
    return F.cross_entropy(logits, labels_all), box_loss / max(labels_all.numel(), 1)


class CascadeRoIHeads(RoIHeads):
    """torchvision's RoIHeads with three cascaded box stages sharing the RoI pooler: stage 0 on
    torchvision's sampled proposals, stage k on stage k-1's refined boxes (detached, clipped,
    relabelled at stage k's IoU, not subsampled); outputs and losses under torchvision's names."""

    def __init__(self, heads: RoIHeads, num_classes: int) -> None:
        """Cascade heads taking a Mask R-CNN's pooler, mask modules, sampler and thresholds
        (its single box head and predictor are dropped), on its device and dtype."""
        sampler = heads.fg_bg_sampler
        fc6 = heads.box_head.fc6
        super().__init__(
            heads.box_roi_pool, None, None, STAGE_IOUS[0], STAGE_IOUS[0],
            sampler.batch_size_per_image, sampler.positive_fraction, STAGE_BOX_WEIGHTS[0],
            heads.score_thresh, heads.nms_thresh, heads.detections_per_img, heads.mask_roi_pool,
            heads.mask_head, heads.mask_predictor,
        )  # fmt: skip
        self.stages = nn.ModuleList(
            CascadeStage(fc6.in_features, num_classes, iou, weights)
            for iou, weights in zip(STAGE_IOUS, STAGE_BOX_WEIGHTS, strict=True)
        )
        # torchvision's sampling (select_training_samples) matches and encodes as stage 0
        self.proposal_matcher = self.stages[0].matcher
        self.box_coder = self.stages[0].box_coder
        self.to(fc6.weight.device, fc6.weight.dtype)

    def run_stage(
        self,
        k: int,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[Tensor, Tensor]:
        """Stage k's class logits and deltas for `boxes`; in training the gradient into the
        shared features is divided by the number of stages."""
        pooled = self.box_roi_pool(features, boxes, image_shapes)
        if self.training:
            pooled = _ScaleGradient.apply(pooled, 1.0 / len(self.stages))
        return self.stages[k](pooled)

    def label_boxes(
        self, k: int, boxes: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Labels (0 below stage k's IoU) and stage k's regression targets of every box."""
        labels, matched_boxes = [], []
        for image_boxes, target in zip(boxes, targets, strict=True):
            gt_boxes = target["boxes"].to(image_boxes.dtype)
            if gt_boxes.numel() == 0:  # an image of background only
                labels.append(image_boxes.new_zeros(len(image_boxes), dtype=torch.int64))
                matched_boxes.append(image_boxes.new_zeros((len(image_boxes), 4)))
                continue
            matched = self.stages[k].matcher(box_ops.box_iou(gt_boxes, image_boxes))
            image_labels = target["labels"][matched.clamp(min=0)].to(torch.int64)
            image_labels[matched < 0] = 0  # below the IoU: background
            labels.append(image_labels)
            matched_boxes.append(gt_boxes[matched.clamp(min=0)])
        encoded = self.stages[k].box_coder.encode(matched_boxes, boxes)
        return labels, list(encoded)

    def next_boxes(
        self, refined: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """The next stage's input: these boxes without gradient, clipped to the image; empty
        ones dropped in training only (at inference the stages' scores must stay aligned)."""
        out = []
        for boxes, shape in zip(refined, image_shapes, strict=True):
            boxes = box_ops.clip_boxes_to_image(boxes.detach(), shape)
            if self.training:
                boxes = boxes[box_ops.remove_small_boxes(boxes, 1e-3)]
            out.append(boxes)
        return out

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """As torchvision's RoIHeads: ([], losses) in training, (detections, {}) in eval."""
        if self.training:
            return [], self.training_losses(features, proposals, image_shapes, targets)
        return self.detect(features, proposals, image_shapes), {}

    def training_losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None,
    ) -> dict[str, Tensor]:
        """The box losses summed over the stages, and the mask loss on stage 0's positives."""
        if targets is None:
            raise ValueError("targets should not be None when training")
        sampled, matched_idxs, labels, regression_targets = self.select_training_samples(
            proposals, targets
        )
        boxes, stage_labels, stage_targets = sampled, labels, regression_targets
        cls_losses, box_losses = [], []
        for k, stage in enumerate(self.stages):
            if k > 0:
                boxes = self.next_boxes(boxes, image_shapes)
                stage_labels, stage_targets = self.label_boxes(k, boxes, targets)
            logits, deltas = self.run_stage(k, features, boxes, image_shapes)
            cls_loss, box_loss = stage_losses(logits, deltas, stage_labels, stage_targets)
            cls_losses.append(cls_loss)
            box_losses.append(box_loss)
            boxes = stage.refine(deltas, boxes)

        positives = [torch.where(image_labels > 0)[0] for image_labels in labels]
        mask_boxes = [b[p] for b, p in zip(sampled, positives, strict=True)]
        mask_matched = [m[p] for m, p in zip(matched_idxs, positives, strict=True)]
        mask_logits = self.mask_logits(features, mask_boxes, image_shapes)
        loss_mask = maskrcnn_loss(
            mask_logits, mask_boxes, [t["masks"] for t in targets],
            [t["labels"] for t in targets], mask_matched,
        )  # fmt: skip
        return {"loss_classifier": sum(cls_losses), "loss_box_reg": sum(box_losses),
                "loss_mask": loss_mask}  # fmt: skip

    def mask_logits(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """The mask branch's per-class logits for `boxes`."""
        pooled = self.mask_roi_pool(features, boxes, image_shapes)
        return self.mask_predictor(self.mask_head(pooled))

    def detect(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """torchvision's Mask R-CNN output per image (boxes, labels, scores, masks): the stages'
        mean softmax on the last stage's boxes."""
        boxes, probabilities = proposals, []
        for k, stage in enumerate(self.stages):
            if k > 0:
                boxes = self.next_boxes(boxes, image_shapes)
            logits, deltas = self.run_stage(k, features, boxes, image_shapes)
            probabilities.append(F.softmax(logits.float(), -1))
            boxes = stage.refine(deltas, boxes)
        result = self.postprocess(torch.stack(probabilities).mean(0), boxes, image_shapes)
        mask_logits = self.mask_logits(features, [r["boxes"] for r in result], image_shapes)
        masks = maskrcnn_inference(mask_logits, [r["labels"] for r in result])
        for mask, r in zip(masks, result, strict=True):
            r["masks"] = mask
        return result

    def postprocess(
        self,
        scores: Tensor,
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """torchvision's postprocess_detections with one box per RoI shared by every class:
        clip, drop background, score_thresh, small boxes, per-class NMS, detections_per_img."""
        num_classes = scores.shape[-1]
        result = []
        per_image = zip(boxes, scores.split([len(b) for b in boxes]), image_shapes, strict=True)
        for image_boxes, image_scores, shape in per_image:
            image_boxes = box_ops.clip_boxes_to_image(image_boxes, shape)
            labels = torch.arange(num_classes, device=scores.device).expand_as(image_scores)
            image_boxes = image_boxes[:, None].expand(-1, num_classes - 1, 4).reshape(-1, 4)
            image_scores, labels = image_scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(image_scores > self.score_thresh)[0]
            image_boxes, image_scores, labels = image_boxes[keep], image_scores[keep], labels[keep]
            keep = box_ops.remove_small_boxes(image_boxes, min_size=1e-2)
            image_boxes, image_scores, labels = image_boxes[keep], image_scores[keep], labels[keep]
            keep = box_ops.batched_nms(image_boxes, image_scores, labels, self.nms_thresh)
            keep = keep[: self.detections_per_img]
            result.append(
                {"boxes": image_boxes[keep], "labels": labels[keep], "scores": image_scores[keep]}
            )
        return result
