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
# the grid a weight is stored on: bitalloc's uniform groups (`group`, the default) or
# llama.cpp's GGUF block types (`gguf`, see GGUF_TYPES below; exported by `gguf-plan`)
GRIDS = ("group", "gguf")

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
    grid: str = "group"  # "gguf": the GGUF type `gguf_type(bits, K)` (group_size unused)

    def __post_init__(self):
        if self.bits not in WEIGHT_BITS:
            raise ValueError(f"bits must be one of {WEIGHT_BITS}, got {self.bits}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")

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

    `grid="gguf"` stores each weight as llama.cpp's GGUF type for its width and row
    length (`gguf_type`); it is quantized by that type's own encoder (`kernels.gguf_quants`,
    round to nearest only), so group_size, symmetric and mse_clip do not apply.
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
    grid: str = "group"  # "gguf": llama.cpp's GGUF types (see the docstring)

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
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")
        if self.grid == "gguf":
            if self.algorithm != "rtn":
                raise ValueError(f"the gguf grid quantizes with each GGUF type's own encoder "
                                 f"(round to nearest): algorithm {self.algorithm!r} cannot run "
                                 "on it; use 'rtn'")
            if self.symmetric or self.mse_clip:
                raise ValueError("the gguf grid's types fix their own scales and offsets: "
                                 "symmetric and mse_clip do not apply to it")

    @property
    def calibrated(self) -> bool:
        """True when the algorithm needs the layers' calibration inputs (not RTN)."""
        return self.algorithm != "rtn"

    def config(self, bits: int) -> QuantConfig:
        return QuantConfig(bits, self.group_size, self.symmetric, self.mse_clip, self.grid)

    def widths_for(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The weight widths a layer of this shape can be stored at on the grid (the gguf
        grid serves a width only where its own type fits the row, `gguf_widths`)."""
        if self.grid == "gguf":
            return gguf_widths(math.prod(shape[1:]))
        return WEIGHT_BITS

    def for_choice(self, choice: Choice) -> QuantConfig:
        return self.config(choice[0])

    def as_dict(self) -> dict:
        """The grid, the algorithm and the parameters that algorithm reads (what the
        sensitivity cache key and the artifact record)."""
        fields = asdict(self)
        keep = ("group_size", "symmetric", "mse_clip", "algorithm", *ALGORITHM_FIELDS[self.algorithm])
        out = {k: fields[k] for k in keep}
        if self.grid != "group":  # the group grid's keys stay the ones they always were
            out["grid"] = self.grid
        return out


# --- the GGUF grid (llama.cpp's block types) -------------------------------------


@dataclass(frozen=True)
class GGUFType:
    """One of llama.cpp's tensor types: `block` weights along a row stored in `block_bytes`
    bytes (scales, offsets and codes together, so bits per weight is the true figure)."""

    name: str  # ggml's name, upper case (llama-quantize reads it case-insensitively)
    block: int
    block_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / self.block

    def fits(self, k: int) -> bool:
        """True when a row of `k` weights is whole blocks of this type."""
        return k % self.block == 0


QK_K = 256  # the k-quants' super-block
GGUF_TYPES: dict[str, GGUFType] = {t.name: t for t in (
    GGUFType("Q2_K", QK_K, 84),  # 2.625 bpw
    GGUFType("Q3_K", QK_K, 110),  # 3.4375
    GGUFType("Q4_K", QK_K, 144),  # 4.5
    GGUFType("Q5_K", QK_K, 176),  # 5.5
    GGUFType("Q6_K", QK_K, 210),  # 6.5625
    GGUFType("Q4_0", 32, 18),  # 4.5
    GGUFType("Q4_1", 32, 20),  # 5.0
    GGUFType("Q5_0", 32, 22),  # 5.5
    GGUFType("Q5_1", 32, 24),  # 6.0
    GGUFType("Q8_0", 32, 34),  # 8.5
    GGUFType("F16", 1, 2),
    GGUFType("F32", 1, 4),  # norms and other 1-D tensors
)}
# the type of each width: a k-quant where the row is whole 256-blocks, else the
# 32-block type of the same width
GGUF_K_TYPES = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0", 16: "F16"}
GGUF_BLOCK32_TYPES = {4: "Q4_0", 5: "Q5_0", 8: "Q8_0", 16: "F16"}
# llama.cpp's own fallback for a k-quant on a row that is not whole 256-blocks
# (tensor_type_fallback in src/llama-quant.cpp): what a width with no 32-block type of its
# own becomes there, so a uniform 2-bit model is what `llama-quantize --pure Q2_K` writes
GGUF_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def gguf_widths(k: int) -> tuple[int, ...]:
    """The widths a row of `k` weights can take on the gguf grid, each as its own type:
    every width on whole 256-blocks, 4/5/8/16 on whole 32-blocks, else 16 only."""
    if k % QK_K == 0:
        return tuple(GGUF_K_TYPES)
    if k % 32 == 0:
        return tuple(GGUF_BLOCK32_TYPES)
    return (FULL_PRECISION_BITS,)


def gguf_type(bits: int, k: int) -> GGUFType:
    """The GGUF type a weight with rows of `k` values takes at width `bits`. A width
    `gguf_widths(k)` does not serve (the problem builder never offers it) takes
    llama.cpp's fallback type, then F16, as llama-quantize would."""
    check_weight_bits(bits)
    if k % QK_K == 0:
        return GGUF_TYPES[GGUF_K_TYPES[bits]]
    name = GGUF_BLOCK32_TYPES.get(bits) or GGUF_FALLBACK[GGUF_K_TYPES[bits]]
    t = GGUF_TYPES[name]
    return t if t.fits(k) else GGUF_TYPES["F16"]


# --- stored bits of one weight ---------------------------------------------------


def num_groups(k: int, config: QuantConfig) -> int:
    return math.ceil(k / config.group_size_for(k))


def weight_bits(shape: tuple[int, ...], config: QuantConfig) -> int:
    """Total stored bits of a weight: codes plus per-group scales and zero points.
    The weight is viewed as (rows = dim 0, K = the rest), grouped along K."""
    rows = shape[0]
    k = math.prod(shape[1:])
    if config.grid == "gguf":
        t = gguf_type(config.bits, k)
        return rows * (k // t.block) * t.block_bytes * 8
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
