"""Evaluation: measure a checkpoint on a task by adapting it with a little of that task's data."""
