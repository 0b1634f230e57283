"""Layer 1, drawing: annotations onto images (overlays) and the figures built on them (figures).
Only the stages that draw (eda, evaluate, predict) depend on it."""
