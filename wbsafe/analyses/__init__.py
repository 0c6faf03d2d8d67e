"""Analyses: each turns checkpoints or activations into a typed result (no file writing)."""
