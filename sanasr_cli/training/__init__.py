"""Training objective and loop."""
