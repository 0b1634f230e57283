"""Stage train: fine-tune a registered arch on data/subset, resumable, one process or torchrun:
dataset -> transforms -> checkpoints -> runtime -> engine (validate, selection, trainlog)."""
