"""Stage download: make data.coco_root hold the COCO-2017 annotation files the pipeline reads.

Missing files are taken out of COCO's zip archives at data.base_url (only the needed
members, streamed); files already present are checked and reused without any request,
so a local COCO copy works offline. Writes a manifest (size and md5 of each file).
A data.coco_root that does not exist (other than the default data/coco, made here), a COCO
copy (train2017/, val2017/) lacking the files, or a data.base_url whose host does not resolve or
refuses connections, fails at once with one line saying what to do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cocoseg.common.cli import log, run_stage, stage_parser
from cocoseg.common.io import write_json
from cocoseg.common.params import Params
from cocoseg.download.archives import ensure_annotations, is_default_root


def parser() -> argparse.ArgumentParser:
    """The shared stage options plus where the manifest goes."""
    p = stage_parser(__doc__)
    p.add_argument("--out", default="data/download.json", help="manifest (default: %(default)s)")
    return p


def main(args: argparse.Namespace, params: Params) -> None:
    """Fetch what is missing, then write the manifest."""
    data = params.data
    manifest = ensure_annotations(
        Path(data.coco_root),
        data.base_url,
        need_test_info=params.subset.test_from == "test2017",
        create=is_default_root(data.coco_root),
        retries=data.retries,
        timeout=data.timeout,
    )
    write_json(args.out, manifest)
    log.info(
        "%s: %d annotation files ready under %s", args.out, len(manifest["files"]), data.coco_root
    )


if __name__ == "__main__":
    raise SystemExit(run_stage(main, parser(), outputs=lambda args: [args.out]))
