"""Optional hand-written kernels, compiled on first use; a plain PyTorch path always exists."""
