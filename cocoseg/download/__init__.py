"""Stage download: COCO's annotation files into data.coco_root, from its zip archives."""
