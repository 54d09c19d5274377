"""Image I/O, degradation pipeline, datasets."""
