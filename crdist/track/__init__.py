"""Experiment trackers (TensorBoard, MLflow, W&B offline) fed from the driver's progress events.

The driver writes every event to ``logs/events.jsonl`` first and then hands it to the trackers, so
the file stays the record of the run: a resumed run reads it back to learn what each tracker already
holds, and never logs the same (tag, step) twice.
"""
