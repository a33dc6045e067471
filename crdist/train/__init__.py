"""Training: the per-worker loop of one task's continued pretraining, and its Ray Train job."""
