"""Kernels: quantizer numerics (scales, zero points, rounding, clipping), size
accounting, bit packing, GPU kernels with CPU fallbacks, quantized modules, and
applying an allocation to a model."""
