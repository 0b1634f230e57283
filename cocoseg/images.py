"""Image files: the one reader (whole decode, errors name the file), and placing the subset's.

`read_rgb` and `decode_image` are how every stage opens an image; `to_rgb` turns every PIL
mode into 8-bit RGB correctly (PIL's own `convert("RGB")` clips 16-bit gray to white and
drops transparency). `place_images` copies the subset's images from the COCO copy or
downloads them, verifying each: a JPEG that does not decode, or whose size disagrees with
its annotation record, is caught here, naming the file and the image id, instead of an hour
into training.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from cocoseg import io
from cocoseg.errors import CocosegError, DataError, DownloadError, os_fault_message

log = logging.getLogger(__name__)
T = TypeVar("T")

# Transparent pixels are composited onto white, as an image viewer or a browser shows them.
BACKGROUND = (255, 255, 255)
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
WITH_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


@dataclass(frozen=True)
class ImageJob:
    """One image to put at `dest`: copied from `src` when that exists, else fetched from `url`."""

    image_id: int
    dest: Path
    src: Path | None
    url: str | None
    width: int
    height: int


def _decoded(path: str | Path, what: str, use: Callable[[Image.Image], T]) -> T:
    """Decode the whole image (not just its header) and return `use(image)`.

    A missing or undecodable file raises DataError naming the path and `what` it is.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return use(im)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except OSError as err:
        if err.errno is not None:  # the file system failed (permissions, I/O), not the data
            raise DataError(os_fault_message(err, path)) from None
        raise DataError(
            f"{path}: {what} does not decode (cannot decode as an image: {err})"
        ) from None
    except (SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"{path}: {what} does not decode (cannot decode as an image: {err})"
        ) from None


def decode_image(path: str | Path, what: str = "image") -> tuple[str, tuple[int, int]]:
    """Check that the whole image decodes; return (PIL mode, (width, height))."""
    return _decoded(path, what, lambda im: (im.mode, im.size))


def read_rgb(path: str | Path, what: str = "image") -> np.ndarray:
    """The image as HxWx3 uint8 RGB, whatever its mode (see `to_rgb`)."""
    return _decoded(path, what, to_rgb)


def to_rgb(im: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB from any PIL mode.

    16-bit gray (`I;16*`) is scaled by its bit depth (65535 -> 255); 32-bit integer gray
    (`I`) the same when its values fit 16 bits, else by its real range; float gray (`F`)
    by x255 when within [0, 1], else by its real range. Images with transparency (RGBA,
    LA, palette with a transparent colour) are composited onto BACKGROUND (white).
    CMYK, YCbCr, 1-bit and palette images use PIL's conversion.
    """
    if im.mode in SIXTEEN_BIT_MODES | {"I", "F"}:
        gray = _gray_to_8bit(np.asarray(im), im.mode)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in WITH_ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        blended = rgba[..., :3] * alpha + np.asarray(BACKGROUND, np.float32) * (1 - alpha)
        return np.round(blended).astype(np.uint8)
    return np.asarray(im.convert("RGB"))


def _gray_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """One channel of 16/32-bit integers or floats as uint8 (rule in `to_rgb`)."""
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode in SIXTEEN_BIT_MODES or (mode == "I" and low >= 0 and high <= 65535):
        scaled = values / 65535.0
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = values
    else:
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def verify_image(path: str | Path, image_id: int, width: int, height: int) -> str:
    """Decode the whole image and check its size; return its PIL mode ('RGB', 'L', 'CMYK'...)."""
    mode, size = decode_image(path, f"image id {image_id}")
    if size != (width, height):
        raise DataError(
            f"{path}: image id {image_id} is {size[0]}x{size[1]} but its annotation record "
            f"says {width}x{height}; masks would not line up"
        )
    return mode


def copy_atomic(src: Path, dest: Path) -> None:
    """Copy src to dest through a temp file and a rename: dest is whole or absent."""
    with src.open("rb") as fin, io.atomic_write(dest) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _download(job: ImageJob, retries: int, timeout: float) -> None:
    """Fetch job.url to job.dest; the download is verified before it takes the final name."""
    from cocoseg.download import download_file

    if not job.url:
        raise DataError(f"image id {job.image_id}: not found at {job.src} and it has no coco_url")

    def verify(part: str | Path) -> None:
        verify_image(part, job.image_id, job.width, job.height)

    try:
        download_file(
            job.url, job.dest, retries=retries, timeout=timeout, progress=False, verify=verify
        )
    except DownloadError as err:
        raise DownloadError(f"image id {job.image_id} ({job.url}): {err}") from None


def place_image(job: ImageJob, retries: int, timeout: float) -> tuple[str, str]:
    """Copy or download one image and verify it; return (how it got there, its PIL mode)."""
    if job.src is not None and job.src.is_file():
        mode = verify_image(job.src, job.image_id, job.width, job.height)
        copy_atomic(job.src, job.dest)
        return "copied", mode
    if job.dest.is_file():
        # Left by an interrupted run: atomic writes mean it is whole; still check it decodes.
        try:
            return "reused", verify_image(job.dest, job.image_id, job.width, job.height)
        except DataError:
            job.dest.unlink()
    _download(job, retries, timeout)
    return "downloaded", verify_image(job.dest, job.image_id, job.width, job.height)


def place_images(
    jobs: Iterable[ImageJob],
    *,
    workers: int,
    retries: int,
    timeout: float,
    desc: str = "images",
    place: Callable[[ImageJob, int, float], tuple[str, str]] = place_image,
) -> tuple[dict[int, str], Counter[str]]:
    """Place all images in parallel with a progress bar; return {image id: mode} and how-counts.

    The first failure (or Ctrl-C / SIGTERM) cancels what has not started, waits for the
    running ones, removes unfinished downloads and is raised as is (it names the image).
    """
    jobs = list(jobs)
    modes: dict[int, str] = {}
    how: Counter[str] = Counter()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image")
    try:
        with tqdm(total=len(jobs), desc=desc, unit="img", leave=False) as bar:
            futures = {pool.submit(place, job, retries, timeout): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                err = future.exception()
                if isinstance(err, CocosegError):
                    raise err
                if err is not None:
                    raise DataError(f"image id {job.image_id} ({job.dest.name}): {err}") from err
                how_placed, modes[job.image_id] = future.result()
                how[how_placed] += 1
                bar.update()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        for job in jobs:
            io.part_path(job.dest).unlink(missing_ok=True)
        raise
    pool.shutdown()
    return modes, how
