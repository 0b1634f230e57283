"""Stage evaluate: score saved predictions (COCO mAP, IoU, Dice, P/R/F1) and explain errors:
matching -> metrics, error_analysis -> reports."""
