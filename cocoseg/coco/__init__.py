"""Layer 1, COCO and file conventions: names of COCO files and splits, COCO mAP (cocoeval), the
one image reader (images), which images a stage reads (inputs), results files' classes (results)."""
