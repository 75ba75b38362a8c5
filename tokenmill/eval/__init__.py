"""Measuring the engine's quality: what a precision costs, on held-out text."""
