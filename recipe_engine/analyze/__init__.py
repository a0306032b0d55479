"""Analysis: per-quantizer fidelity, sensitivity, tuning and the run report."""
