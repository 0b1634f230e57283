"""Stage predict: the trained model over test images or a folder, to results and overlays
(outputs). The inference path itself is the modeling layer's, shared with infer and train."""
