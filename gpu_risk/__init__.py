"""gpu_risk."""
