"""What a job asks for (`JobSpec`) and what it returns (`JobResult`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kernels.export.formats import EXPORT_FORMATS, export_format
from kernels.scheme import (
    ACTIVATION_BITS,
    ACTIVATION_MODES,
    ACTIVATION_RANGES,
    ALGORITHMS,
    GRIDS,
    WEIGHT_BITS,
    ActivationScheme,
    QuantScheme,
    check_activation_bits,
    check_weight_bits,
)
from sensitivity.methods import check_activation_method, get_method, parse_method_params

BUDGET_KEYS = ("avg_bits", "size_bytes", "size_mb", "bops", "latency_ms", "max_quality_drop")
MB = 1_000_000  # budgets in MB are decimal megabytes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActivationSettings(_Strict):
    """How the inputs of layers at a_bits < 16 are quantized (`kernels.scheme.ActivationScheme`):
    static per-tensor ranges calibrated by `range` (minmax | percentile | mse), or dynamic
    per-token ranges; symmetric or asymmetric."""

    mode: Literal[ACTIVATION_MODES] = "static"
    range: Literal[ACTIVATION_RANGES] = "minmax"
    symmetric: bool = False
    percentile: float = Field(ActivationScheme.percentile, gt=50, le=100)  # range percentile

    @model_validator(mode="after")
    def _consistent(self):
        self.scheme()  # dynamic ranges with a clipping method: refused with the reason
        return self

    def scheme(self) -> ActivationScheme:
        return ActivationScheme(self.mode, self.range, self.symmetric, self.percentile)


class QuantSettings(_Strict):
    """The job's quantizer (`kernels.scheme.QuantScheme`): the grid, and the algorithm
    that picks the integers on it (`algorithm`, the CLI's `--quantizer`) with its
    parameters; the sensitivity, the evaluation and the artifact all use it."""

    group_size: int = Field(128, ge=1, le=65536)
    symmetric: bool = False
    mse_clip: bool = False
    algorithm: Literal[ALGORITHMS] = "rtn"  # rtn | gptq | adaquant
    damping: float = Field(QuantScheme.damping, ge=0, le=1)  # gptq, adaquant
    act_order: bool = QuantScheme.act_order  # gptq, adaquant
    block_size: int = Field(QuantScheme.block_size, ge=1, le=65536)  # gptq, adaquant
    adaquant_steps: int = Field(QuantScheme.adaquant_steps, ge=0, le=10_000)
    adaquant_lr: float = Field(QuantScheme.adaquant_lr, gt=0, le=1)
    # the weight grid: uniform groups, or llama.cpp's GGUF types (set by export gguf-plan)
    grid: Literal[GRIDS] = "group"
    # the inputs of layers whose a_bits < 16 (JobSpec.activation_bits)
    activation: ActivationSettings = Field(default_factory=ActivationSettings)

    def scheme(self) -> QuantScheme:
        return QuantScheme(self.group_size, self.symmetric, self.mse_clip, self.algorithm,
                           self.damping, self.act_order, self.block_size, self.adaquant_steps,
                           self.adaquant_lr, activation=self.activation.scheme(), grid=self.grid)


def _check_layer_widths(widths: dict[str, list[int]], check, what: str) -> None:
    """Per-layer width lists: none empty, every width one `check` accepts."""
    for name, bits in widths.items():
        if not bits:
            raise ValueError(f"{what} for {name!r} are empty")
        for b in bits:
            check(b)


class Overrides(_Strict):
    """Per-layer control: pin a layer's bits, restrict its widths, or leave it at 16."""

    pins: dict[str, int] = Field(default_factory=dict, max_length=10_000)
    allowed: dict[str, list[int]] = Field(default_factory=dict, max_length=10_000)
    exclude: list[str] = Field(default_factory=list, max_length=10_000)
    # per-layer activation widths, in place of the job's activation_bits for that layer
    activation_bits: dict[str, list[int]] = Field(default_factory=dict, max_length=10_000)

    @field_validator("activation_bits")
    @classmethod
    def _activation_bits(cls, allowed):
        _check_layer_widths(allowed, check_activation_bits, "activation widths")
        return {name: sorted(set(bits)) for name, bits in allowed.items()}

    @field_validator("pins")
    @classmethod
    def _pins(cls, pins):
        return {k: check_weight_bits(v) for k, v in pins.items()}

    @field_validator("allowed")
    @classmethod
    def _allowed(cls, allowed):
        _check_layer_widths(allowed, check_weight_bits, "allowed widths")
        return allowed


class JobSpec(_Strict):
    model: str = Field(min_length=1, max_length=200)
    # fisher: the same allocations as hawq_v2 on our models at a fraction of the time
    # (docs/results.md, docs/methods.md)
    method: str = Field("fisher", min_length=1, max_length=50)
    method_params: dict[str, Any] = Field(default_factory=dict, max_length=50)
    budgets: dict[str, float] = Field(min_length=1, max_length=len(BUDGET_KEYS))
    weight_bits: list[int] = Field(default_factory=lambda: list(WEIGHT_BITS), min_length=1)
    # activation widths each layer's input may take (16: not quantized); any below 16 add
    # (w_bits, a_bits) choices: hawq_v2, fisher and empirical estimate their sensitivity
    activation_bits: list[int] = Field(default_factory=lambda: [ACTIVATION_BITS], min_length=1,
                                       max_length=8)
    quant: QuantSettings = Field(default_factory=QuantSettings)
    overrides: Overrides = Field(default_factory=Overrides)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    # latency_ms budget: per-layer, per-choice milliseconds ({layer: {"w4a16": ms}}), e.g. from
    # `bitalloc latency`, plus the latency of everything outside the quantizable layers
    latency_table: dict[str, dict[str, float]] | None = Field(None, max_length=10_000)
    fixed_latency_ms: float = Field(0.0, ge=0)
    # max_quality_drop budget: bisection stops once the measured drop is in [min, max]
    # (min defaults to half the max), after at most quality_evals evaluations
    min_quality_drop: float | None = Field(None, ge=0)
    quality_evals: int = Field(8, ge=1, le=32)
    pareto_points: int = Field(16, ge=0, le=128)  # 0: no frontier, no uniform curve
    # the format the artifact is written in (kernels.export.formats); its limits (widths,
    # symmetric groups, whole groups, embeddings) constrain the allocation before it solves
    export: str = Field("bitalloc", description=f"one of {', '.join(EXPORT_FORMATS)}")

    @field_validator("method")
    @classmethod
    def _method(cls, method):
        get_method(method)  # unknown: the reason lists the methods
        return method

    @field_validator("method_params")
    @classmethod
    def _method_params(cls, params, info: ValidationInfo):
        # checked here so a bad parameter is refused at submit time, not in the worker; the
        # params stay as given (the sensitivity cache key is computed from them)
        if "method" in info.data:  # an unknown method is reported on its own
            parse_method_params(info.data["method"], params)
        return params

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, budgets):
        for key, value in budgets.items():
            if key not in BUDGET_KEYS:
                raise ValueError(f"unknown budget {key!r}; budgets: {', '.join(BUDGET_KEYS)}")
            if not value > 0:
                raise ValueError(f"budget {key} must be positive, got {value}")
        if "size_mb" in budgets and "size_bytes" in budgets:
            raise ValueError("give the size budget once: size_mb or size_bytes")
        return budgets

    @field_validator("weight_bits")
    @classmethod
    def _weight_bits(cls, bits):
        return sorted({check_weight_bits(b) for b in bits})

    @field_validator("activation_bits")
    @classmethod
    def _activation_bits(cls, bits):
        return sorted({check_activation_bits(b) for b in bits})

    def quantizes_activations(self) -> bool:
        """True when some layer may take a_bits < 16."""
        widths = set(self.activation_bits)
        for bits in self.overrides.activation_bits.values():
            widths |= set(bits)
        return min(widths) < ACTIVATION_BITS

    @model_validator(mode="after")
    def _consistent(self):
        avg = self.budgets.get("avg_bits")
        if avg is not None and not 1 <= avg <= 32:
            raise ValueError(f"avg_bits must be between 1 and 32, got {avg}")
        if "latency_ms" in self.budgets and not self.latency_table:
            raise ValueError("a latency_ms budget needs latency_table (per-layer, per-choice ms; "
                             "`bitalloc latency` measures one)")
        fmt = export_format(self.export)
        if "weight_bits" not in self.model_fields_set:  # the default: every width the format holds
            self.weight_bits = [b for b in self.weight_bits if b in fmt.widths]
        widths = set(self.weight_bits) | set(self.overrides.pins.values())
        for bits in self.overrides.allowed.values():
            widths |= set(bits)
        if fmt.symmetric and "symmetric" not in self.quant.model_fields_set:
            self.quant.symmetric = True  # the default: the grid the format loads
        fmt.check_spec(sorted(widths), self.quant.symmetric)
        self._check_grid(fmt)
        if self.quantizes_activations():
            check_activation_method(self.method)
            if not fmt.input_quantization:
                able = " or ".join(repr(f.name) for f in EXPORT_FORMATS.values() if f.input_quantization)
                raise ValueError(f"export {self.export!r} does not store activation quantization; "
                                 f"activation bits below 16 need export {able}")
        top = self.budgets.get("max_quality_drop")
        if self.min_quality_drop is not None and (top is None or self.min_quality_drop > top):
            raise ValueError("min_quality_drop needs a max_quality_drop budget at least as large")
        return self

    def _check_grid(self, fmt) -> None:
        """The export format's grid is the job's (gguf-plan: the GGUF types); a grid set
        against the format, or a quantizer the grid cannot run, is refused."""
        q = self.quant
        if q.grid != fmt.grid:
            if "grid" in q.model_fields_set:
                owner = next(f.name for f in EXPORT_FORMATS.values() if f.grid == q.grid)
                raise ValueError(f"export {fmt.name!r} stores the {fmt.grid!r} grid, not "
                                 f"quant.grid {q.grid!r} (export {owner!r} does)")
            q.grid = fmt.grid
        try:
            q.scheme()
        except ValueError as exc:
            raise ValueError(f"export {fmt.name!r}: {exc}") from None

    def quality_drop_range(self) -> tuple[float, float] | None:
        top = self.budgets.get("max_quality_drop")
        if top is None:
            return None
        return (top / 2 if self.min_quality_drop is None else self.min_quality_drop), top

    def solver_budgets(self) -> dict[str, float]:
        """Budgets in the solver's units (MB turned into bytes)."""
        out = {k: v for k, v in self.budgets.items() if k not in ("size_mb", "max_quality_drop")}
        if "size_mb" in self.budgets:
            out["size_bytes"] = self.budgets["size_mb"] * MB
        return out


class LayerResult(BaseModel):
    name: str
    kind: str
    shape: list[int]
    params: int
    macs: int
    group: str | None
    w_bits: int
    a_bits: int
    bits_per_weight: float  # overhead included
    bytes: float
    omega: float  # Ω of the chosen width
    omega_by_bits: dict[str, float]  # "w4a16" -> Ω
    stats: dict[str, float]  # estimator statistics (trace, its standard error, probes, ...)


class Quality(BaseModel):
    metric: str  # the headline metric
    # "higher" or "lower" is better, for every metric measured (results stored before
    # directions existed have none: their metrics were all higher-is-better)
    directions: dict[str, str] = Field(default_factory=dict)
    full_precision: dict[str, float]
    allocation: dict[str, float]
    uniform: dict[str, float]
    uniform_bits: int  # width of the uniform model compared against
    uniform_size_bytes: float


class Summary(BaseModel):
    size_bytes: float  # whole model: quantized layers + everything else at stored dtype
    full_precision_bytes: float
    quantized_layer_bytes: float
    avg_bits: float  # over quantizable params, scale and zero overhead included
    avg_bits_no_overhead: float
    bops: float


class SolverReport(BaseModel):
    status: str
    objective: float
    solve_time_s: float
    backend: str
    budget_use: dict[str, list[float]]  # kind -> [used, limit]


class FrontierPoint(BaseModel):
    cost: float  # in the frontier's budget kind
    objective: float  # predicted Σ Ω
    avg_bits: float
    chosen: bool


class UniformPoint(BaseModel):
    w_bits: int
    a_bits: int = 16  # the inputs' width (uniform_activation_points); 16: not quantized
    cost: float  # in the frontier's budget kind
    avg_bits: float
    size_bytes: float
    quality: dict[str, float]


class QualityTrial(BaseModel):
    size_bytes: float  # the size budget solved at
    avg_bits: float
    drop: float  # measured drop of the headline metric


class QualitySearch(BaseModel):
    min_drop: float
    max_drop: float
    reached: bool
    message: str
    trials: list[QualityTrial]


class JobResult(BaseModel):
    spec: JobSpec
    model: dict[str, Any]  # name, description and facts of the loaded model
    layers: list[LayerResult]
    unused_layers: list[str]  # no gradient path to the loss: left unquantized
    # layers the export format cannot quantize: left unquantized, outside the average bits
    export_unquantized: list[str] = Field(default_factory=list)
    summary: Summary
    solver: SolverReport
    quality: Quality
    frontier_kind: str  # the budget the Pareto sweep varies
    pareto: list[FrontierPoint]  # cost vs Σ Ω, cheapest first, the chosen point marked
    uniform_points: list[UniformPoint]  # measured uniform widths (all, or the nearest without pareto)
    # with activation widths below 16: uniform W8/W4 with every input at each such width
    # (W8A8, W4A8, ...; inputs that are not quantized stay at 16), measured, cost in frontier_kind
    uniform_activation_points: list[UniformPoint] = Field(default_factory=list)
    quality_search: QualitySearch | None = None  # the max_quality_drop bisection
    sensitivity: dict[str, Any]  # estimator metadata: method, params, HVPs, seconds
    timings: dict[str, float]  # seconds per stage
    # the process's peak resident memory (MB) at the end of each stage
    peak_rss_mb: dict[str, float] = Field(default_factory=dict)
