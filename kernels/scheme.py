"""The quantization scheme, free of torch: the widths a layer can take, what a
choice is, how one weight is quantized (`QuantConfig`), the job-wide settings
that give each layer its config (`QuantScheme`), and what a quantized weight
costs in stored bits (scale and zero-point overhead included, DESIGN §3).

This module is the one owner of these definitions; the service reads it too,
so it must never import torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

WEIGHT_BITS = (2, 3, 4, 5, 6, 8, 16)
FULL_PRECISION_BITS = 16  # "left in 16-bit"
ACTIVATION_BITS = 16  # activations stay in 16-bit until activation quantization is asked for
# activation widths a job can allow for the input of a quantizable layer (16: not quantized)
ACTIVATION_WIDTHS = (4, 6, 8, 16)
# static per-tensor ranges from the calibration inputs: min/max, a percentile of |values|
# at both ends, or the clip that minimises the squared error; or dynamic per-token ranges
ACTIVATION_RANGES = ("minmax", "percentile", "mse")
ACTIVATION_MODES = ("static", "dynamic")
SCALE_BITS = 16  # fp16 scales
# the algorithm that picks the integers: round-to-nearest, GPTQ (column updates with the
# inverse Hessian of the layer inputs), AdaQuant-style layer-wise calibration
ALGORITHMS = ("rtn", "gptq", "adaquant")
# the scheme fields each algorithm reads (besides the grid: group_size, symmetric, mse_clip);
# only these enter `as_dict`, so an rtn scheme keeps the cache key it always had
ALGORITHM_FIELDS = {
    "rtn": (),
    "gptq": ("damping", "act_order", "block_size"),
    "adaquant": ("damping", "act_order", "block_size", "adaquant_steps", "adaquant_lr"),
}

Choice = tuple[int, int]
"""(w_bits, a_bits) of one layer."""


def choice_key(choice: Choice) -> str:
    """"w4a16" for (4, 16): how choices are written in JSON."""
    return f"w{choice[0]}a{choice[1]}"


def parse_choice_key(key: str) -> Choice:
    w, a = key[1:].split("a")
    return int(w), int(a)


def check_weight_bits(bits: int) -> int:
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight bits must be one of {list(WEIGHT_BITS)}, got {bits}")
    return bits


def check_activation_bits(bits: int) -> int:
    if bits not in ACTIVATION_WIDTHS:
        raise ValueError(f"activation bits must be one of {list(ACTIVATION_WIDTHS)}, got {bits}")
    return bits


@dataclass(frozen=True)
class ActivationScheme:
    """How the input of a layer whose choice has a_bits < 16 is quantized (`kernels.activation`).

    `mode` "static": one scale (and zero point) per tensor, calibrated on the calibration
    inputs with `range` "minmax" (their min and max), "percentile" (the `percentile`-th
    percentile at the top and its mirror at the bottom) or "mse" (the clip of the min/max
    range that minimises ‖a − Q(a)‖² at each width). `mode` "dynamic": per-token ranges
    (each position's min/max over its features) computed at run time, no calibration; only
    "minmax" applies. `symmetric`: zero point 0, codes in [−(2^(b−1)−1), 2^(b−1)−1]."""

    mode: str = "static"
    range: str = "minmax"
    symmetric: bool = False
    percentile: float = 99.99

    def __post_init__(self):
        if self.mode not in ACTIVATION_MODES:
            raise ValueError(f"activation mode must be one of {ACTIVATION_MODES}, got {self.mode!r}")
        if self.range not in ACTIVATION_RANGES:
            raise ValueError(f"activation range must be one of {ACTIVATION_RANGES}, got {self.range!r}")
        if self.mode == "dynamic" and self.range != "minmax":
            raise ValueError("dynamic (per-token) activation ranges are each token's min/max: "
                             f"range {self.range!r} needs mode 'static'")
        if not 50 < self.percentile <= 100:
            raise ValueError(f"activation percentile must be in (50, 100], got {self.percentile}")

    def as_dict(self) -> dict:
        """The settings that determine the quantizer (the percentile only where it is used)."""
        out = {"mode": self.mode, "range": self.range, "symmetric": self.symmetric}
        if self.range == "percentile":
            out["percentile"] = self.percentile
        return out


@dataclass(frozen=True)
class QuantConfig:
    """How one weight is quantized. `bits=16` means left in 16-bit."""

    bits: int
    group_size: int = 128
    symmetric: bool = False
    mse_clip: bool = False

    def __post_init__(self):
        if self.bits not in WEIGHT_BITS:
            raise ValueError(f"bits must be one of {WEIGHT_BITS}, got {self.bits}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")

    @property
    def quantized(self) -> bool:
        return self.bits < FULL_PRECISION_BITS

    @property
    def zero_bits(self) -> int:
        """Bits stored per group for the zero point (packed, same width as the codes)."""
        return 0 if self.symmetric else self.bits

    @property
    def min_code(self) -> int:
        """Symmetric mode uses the restricted range (code − zero) ∈ [−(2^(b−1)−1), 2^(b−1)−1],
        so the grid is symmetric and re-quantizing gives the same scale."""
        return 1 if self.symmetric else 0

    def group_size_for(self, k: int) -> int:
        """Effective group size along K: per output channel when K is smaller."""
        return min(self.group_size, k)


@dataclass(frozen=True)
class QuantScheme:
    """The job-wide quantizer settings; `config(bits)` is a layer's config at a width.

    `algorithm` picks the integers on the grid the other three fields define (the grid,
    and so the stored bytes, is the same for every algorithm). GPTQ and AdaQuant read
    the calibration inputs' Hessian H = 2XᵀX/n, damped by `damping` · mean(diag H);
    `act_order` processes columns by decreasing diag(H) (groups stay contiguous along K,
    see `kernels.gptq`); `block_size` is GPTQ's lazy-update block. AdaQuant starts from
    GPTQ's result and runs `adaquant_steps` Adam steps of learning rate `adaquant_lr`
    (in grid steps) on the layer's output error (`kernels.adaquant`).
    """

    group_size: int = 128
    symmetric: bool = False
    mse_clip: bool = False
    algorithm: str = "rtn"
    damping: float = 0.01
    act_order: bool = False
    block_size: int = 128
    adaquant_steps: int = 100
    adaquant_lr: float = 0.01
    # the inputs of layers whose choice has a_bits < 16; not in `as_dict` (the weight grid):
    # the sensitivity cache key adds it only when a table holds such choices
    activation: ActivationScheme = ActivationScheme()

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"quantizer algorithm must be one of {ALGORITHMS}, "
                             f"got {self.algorithm!r}")
        if not 0 <= self.damping <= 1:
            raise ValueError(f"damping must be in [0, 1], got {self.damping}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.adaquant_steps < 0:
            raise ValueError(f"adaquant_steps must be >= 0, got {self.adaquant_steps}")
        if not self.adaquant_lr > 0:
            raise ValueError(f"adaquant_lr must be positive, got {self.adaquant_lr}")

    @property
    def calibrated(self) -> bool:
        """True when the algorithm needs the layers' calibration inputs (not RTN)."""
        return self.algorithm != "rtn"

    def config(self, bits: int) -> QuantConfig:
        return QuantConfig(bits, self.group_size, self.symmetric, self.mse_clip)

    def for_choice(self, choice: Choice) -> QuantConfig:
        return self.config(choice[0])

    def as_dict(self) -> dict:
        """The grid, the algorithm and the parameters that algorithm reads (what the
        sensitivity cache key and the artifact record)."""
        fields = asdict(self)
        keep = ("group_size", "symmetric", "mse_clip", "algorithm", *ALGORITHM_FIELDS[self.algorithm])
        return {k: fields[k] for k in keep}


# --- stored bits of one weight ---------------------------------------------------


def num_groups(k: int, config: QuantConfig) -> int:
    return math.ceil(k / config.group_size_for(k))


def weight_bits(shape: tuple[int, ...], config: QuantConfig) -> int:
    """Total stored bits of a weight: codes plus per-group scales and zero points.
    The weight is viewed as (rows = dim 0, K = the rest), grouped along K."""
    rows = shape[0]
    k = math.prod(shape[1:])
    if not config.quantized:
        return rows * k * FULL_PRECISION_BITS
    overhead = rows * num_groups(k, config) * (SCALE_BITS + config.zero_bits)
    return rows * k * config.bits + overhead


def bits_per_weight(shape: tuple[int, ...], config: QuantConfig) -> float:
    """Average stored bits per weight including the scale and zero overhead
    (e.g. 4-bit, g=128, asymmetric: 4 + (16 + 4)/128 = 4.156)."""
    return weight_bits(shape, config) / math.prod(shape)


def weight_bytes(shape: tuple[int, ...], config: QuantConfig) -> float:
    return weight_bits(shape, config) / 8
