"""Stage subset: COCO-2017 -> data/subset: read and check the annotation files (cocofile), select
and write the splits (make), place their images (placing)."""
