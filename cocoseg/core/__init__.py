"""What every stage shares: params, the stage runner, errors, files, images, the model, inference
(the one fast path). Public names by module in EXPORTS, each module loaded on first use."""

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` importing `package.<exports[name]>` when `name` is first used: a
    stage importing one module of a folder loads (and depends in dvc.yaml on) that alone."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__


EXPORTS = {
    "load_params": "config", "parse_params": "config", "Params": "config",
    "run_stage": "cli", "stage_parser": "cli",
    "CocosegError": "errors", "ParamError": "errors", "DataError": "errors",
    "OutputError": "errors",
    "atomic_write": "io", "read_json": "io", "write_json": "io", "write_csv": "io",
    "resolve_device": "device",
    "build_model": "model", "load_trained_model": "model", "model_record": "model",
    "read_rgb": "images", "decode_image": "images",
    "folder_images": "inputs", "subset_images": "inputs", "split_paths": "inputs",
    "size_name": "coco", "SPLITS": "coco", "run_cocoeval": "cocoeval", "summary": "cocoeval",
    "predict_images": "inference", "run_trained_model": "inference",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)
