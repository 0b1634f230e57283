"""What every stage shares: params, the stage runner, errors, files, images, the model, inference
(the one fast path). Public names by module in EXPORTS, each module loaded on first use."""

from cocoseg.core.exports import lazy_exports

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
