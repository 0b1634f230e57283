"""Checkpoints: each epoch's `epoch_NN.pt`, written atomically; find the one to resume, clear, thin.
A run resumes from the newest readable one (epoch <= train.epochs) of the same params, classes
and data (`epochs` counts only under the cosine schedule, `repeat_threshold` only with the
repeat_factor sampler); otherwise all are removed."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from cocoseg.common.errors import DataError
from cocoseg.common.io import atomic_write, read_json, safe_join
from cocoseg.modeling.records import load_record

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
NOT_IN_RESUME_KEY = ("keep_checkpoints", "select")  # what is kept does not change training


def checkpoint_path(folder: Path, epoch: int) -> Path:
    """models/checkpoints/epoch_NN.pt."""
    return folder / f"epoch_{epoch:02d}.pt"


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the checkpoint files in folder, newest first."""
    found = {path.stem.removeprefix("epoch_"): path for path in folder.glob("epoch_*.pt")}
    return sorted(
        ((int(epoch), path) for epoch, path in found.items() if epoch.isdigit()), reverse=True
    )


def tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in nested dicts/lists: about what torch.save will write."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_torch(path: Path, obj: Any) -> None:
    """torch.save through a temp file renamed into place (a full disk names the space needed)."""
    with atomic_write(path, "wb", size_hint=tensor_bytes(obj)) as f:
        torch.save(obj, f)


def save_checkpoint(
    folder: Path, epoch: int, stateful: dict[str, Any], identity: dict[str, Any], history: dict
) -> None:
    """epoch_NN.pt: the state of each object (model, optimizer, ...; a DDP model's `.module`),
    this run's identity, logs."""
    states = {name: getattr(obj, "module", obj).state_dict() for name, obj in stateful.items()}
    state = {"format": CHECKPOINT_FORMAT, **states, "epoch": epoch, **identity, "history": history}
    save_torch(checkpoint_path(folder, epoch), state)


def data_fingerprint(images_dir: Path, ann_file: Path) -> str:
    """sha256 over the train json and every image it lists, in its order: DVC does not hash a COCO
    copy's images, and a checkpoint made from other pixels must not be resumed."""
    digest = hashlib.sha256(ann_file.read_bytes())
    for image in read_json(ann_file).get("images", []):
        path = safe_join(images_dir, image["file_name"])
        with path.open("rb") as f:
            digest.update(image["file_name"].encode() + b"\0")
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def resume_key(params: dict[str, Any]) -> dict[str, Any]:
    """The params a resumed run must share with its checkpoint (all but NOT_IN_RESUME_KEY)."""
    unused = set(NOT_IN_RESUME_KEY)
    if params.get("schedule") != "cosine":  # only its curve depends on epochs
        unused.add("epochs")
    if params.get("sampler") == "uniform":  # draws every image once, whatever the threshold
        unused.add("repeat_threshold")
    return {k: v for k, v in params.items() if k not in unused}


def why_not_resumed(saved: dict[str, Any], identity: dict[str, Any]) -> str | None:
    """Why a checkpoint's identity is another run's ('training data changed', ...), or None."""
    reasons = []
    if saved.get("format") != CHECKPOINT_FORMAT:  # another layout: its states may not load
        reasons.append(f"checkpoint format {saved.get('format')} -> {CHECKPOINT_FORMAT}")
    if saved.get("data") != identity["data"]:
        reasons.append("training data changed")
    if saved.get("classes") != identity["classes"]:
        reasons.append(f"classes changed: {saved.get('classes')} -> {identity['classes']}")
    old, new = resume_key(saved.get("params") or {}), resume_key(identity["params"])
    diff = []  # 'key: old -> new', long values shown as ...
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            shown = [v if len(repr(v)) < 40 else "..." for v in (old.get(key), new.get(key))]
            diff.append(f"{key}: {shown[0]!r} -> {shown[1]!r}")
    if diff:
        reasons.append("train params changed: " + ", ".join(diff))
    return "; ".join(reasons) or None


def find_resume(folder: Path, identity: dict[str, Any], epochs: int) -> dict[str, Any] | None:
    """The newest readable checkpoint (epoch <= epochs) of this run's identity, or None."""
    for epoch, path in checkpoints(folder):
        if epoch > epochs:
            continue
        try:
            state = load_record(path)
        except DataError as err:
            log.warning("skipping unreadable checkpoint: %s", err)
            continue
        why = why_not_resumed(state, identity)
        if why:
            log.info("checkpoints in %s are from another run (%s): starting fresh", folder, why)
            return None
        return state
    return None


def clear_checkpoints(folder: Path) -> None:
    """Remove old checkpoints, best.pt and temp files a killed write left behind."""
    stale = [p for _, p in checkpoints(folder)] + list(folder.glob(".*.pt.*.tmp"))
    stale += [folder / "best.pt"] if (folder / "best.pt").exists() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d old checkpoint file(s) from %s", len(stale), folder)


def remove_older_checkpoints(folder: Path, epoch: int, keep: int) -> None:
    """Once epoch `epoch` is saved, keep it and the `keep` - 1 before it (`keep` 0: keep all)."""
    if not keep:
        return
    for older, path in checkpoints(folder):
        if older <= epoch - keep:
            path.unlink(missing_ok=True)
