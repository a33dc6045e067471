"""Readers of raw dataset formats; each returns an in-memory labelled set."""
