"""Placing the subset's images: copied from the COCO copy or downloaded, each verified (one that
does not decode, or has its record's size neither as stored nor EXIF-oriented, stops here)."""

from __future__ import annotations

import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cocoseg.coco.images import decode_image
from cocoseg.common import io
from cocoseg.common.errors import CocosegError, DataError, DownloadError


@dataclass(frozen=True)
class ImageJob:
    """One image to put at `dest`: copied from `src` when that exists, else fetched from `url`."""

    image_id: int
    dest: Path
    src: Path | None
    url: str | None
    width: int
    height: int

    def verify(self, path: str | Path) -> str:
        """Decode the whole image and check that its stored or EXIF-oriented size is the recorded
        one (the frame every reader then uses); return its PIL mode ('RGB', 'L'...)."""
        return decode_image(path, f"image id {self.image_id}", (self.width, self.height))[0]


def place_image(job: ImageJob, retries: int, timeout: float) -> tuple[str, str]:
    """Copy or download one image and verify it; return (how it got there, its PIL mode)."""
    if job.src is not None and job.src.is_file():
        mode = job.verify(job.src)
        with job.src.open("rb") as fin, io.atomic_write(job.dest) as fout:
            shutil.copyfileobj(fin, fout, io.MB)
        return "copied", mode
    if job.dest.is_file():
        # Left by an interrupted run: atomic writes mean it is whole; still check it decodes.
        try:
            return "reused", job.verify(job.dest)
        except DataError:
            job.dest.unlink()
    if not job.url:
        raise DataError(f"image id {job.image_id}: not found at {job.src} and it has no coco_url")
    from cocoseg.common.http import download_file  # requests: loaded only to download

    try:  # verified before it takes the final name
        download_file(
            job.url, job.dest, retries=retries, timeout=timeout, progress=False, verify=job.verify
        )
    except DownloadError as err:
        raise DownloadError(f"image id {job.image_id} ({job.url}): {err}") from None
    return "downloaded", job.verify(job.dest)


def place_images(
    jobs: list[ImageJob], *, workers: int, retries: int, timeout: float, desc: str = "images"
) -> tuple[dict[int, str], Counter[str]]:
    """Place all images in parallel; return {image id: mode} and how-counts. The first failure (or
    Ctrl-C / SIGTERM) cancels the rest, removes unfinished downloads and is raised as is."""
    modes: dict[int, str] = {}
    how: Counter[str] = Counter()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image")
    try:
        with tqdm(total=len(jobs), desc=desc, unit="img", leave=False) as bar:
            futures = {pool.submit(place_image, job, retries, timeout): job for job in jobs}
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
