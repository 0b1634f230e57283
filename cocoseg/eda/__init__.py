"""Stage eda: counts, sizes and sample overlays of data/subset (analysis)."""
