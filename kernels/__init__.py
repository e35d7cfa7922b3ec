"""Compute kernels: plain arrays in, plain arrays out (installed as gpu_risk.kernels)."""
