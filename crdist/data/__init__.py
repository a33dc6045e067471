"""Data: raw sources → class-incremental task streams → WebDataset shards → per-rank streams."""
