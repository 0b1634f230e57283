"""Stage evaluate: score saved predictions (COCO mAP, IoU, Dice, P/R/F1, pixel IoU and Dice)
and explain errors: matching, semantic -> metrics, error_analysis -> reports."""
