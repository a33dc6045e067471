"""Report: accuracy matrices, metrics, heatmaps and a side-by-side comparison of methods."""
