"""Evaluation: image pairing, pyiqa metrics under stated protocols (metrics.py), checkpoint ranking, and
cost measurements (bench.py)."""
