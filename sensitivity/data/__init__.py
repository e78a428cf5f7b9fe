"""Calibration and evaluation data shipped with, or bundled beside, bitalloc."""
