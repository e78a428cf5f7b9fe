"""Sensitivity: built-in models and calibration data, layer discovery, losses,
and the per-layer sensitivity estimators that fill the Ω table."""
