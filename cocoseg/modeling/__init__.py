"""Layer 2, the models: the arch registry (registry, arch, one file per family), start weights
(weights), the model file (records), the device and the one inference path (paste, rle, inference;
views, slicing, tta) with stage infer's code (infer). Only train, infer and predict depend on it."""
