"""Datasets (TFDS builders), augmentation, targets and input pipelines."""
