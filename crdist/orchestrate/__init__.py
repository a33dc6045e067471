"""Orchestration: the driver that plans train and eval jobs and runs them on Ray."""
