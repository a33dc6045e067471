"""Models: backbones (feature extractors) and the classifier that puts a linear head on one."""
