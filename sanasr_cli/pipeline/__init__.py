"""Inference pipelines built on the core model."""
