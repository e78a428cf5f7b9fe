"""The sensitivity methods a job can name, each with one typed, validated config.

Torch-free: the service validates `method` and `method_params` at submit time
through `parse_method_params`, the manifest lists `describe()`, and the engine
parses a job's params once, here, before any estimator runs. Each method's
estimator lives in the module its `Method` names (`sensitivity.estimators.*`),
imported only when the method runs.

A config is a frozen dataclass whose `__post_init__` checks every value;
`meta_params()` is what the estimator's table records as `meta["params"]`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

TRACE_MODES = ("exact", "shared")
TRACE_ENGINES = ("auto", "hvp", "jvp", "gn", "gn_joint")
FISHER_ENGINES = ("auto", "gn", "gn_joint")
BACKENDS = ("bitalloc", "pyhessian")
LRP_RULES = ("auto", "captum", "modified_gradient")
LRP_ATTENTION = ("attnlrp", "constant")
PAIR_MODES = ("hessian", "measured")
_JSON_TYPES = {"int": "integer", "float": "number", "str": "string"}


# --- value checks ---------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_seed(value: Any) -> None:
    """What torch generators take (hawq_v1 adds the layer index: still in range)."""
    if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
        raise ValueError(f"seed must be an integer in [-2**63, 2**63), got {value!r}")


def check_fraction(name: str, value: Any) -> None:
    if not _is_number(value) or not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def check_positive(name: str, value: Any) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def check_one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _choice(default: str, allowed: tuple[str, ...]):
    """A string parameter restricted to `allowed` (listed in the manifest)."""
    return field(default=default, metadata={"allowed": allowed})


# --- configs --------------------------------------------------------------------


class MethodConfig:
    """Shared behaviour of the method configs: parsing from a job's params dict with a
    clear error for unknown names, the table's `meta["params"]`, the manifest entry."""

    @classmethod
    def accepted(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]):
        check_known(params, cls.accepted())
        return cls(**params)

    def meta_params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parameters(cls) -> list[dict[str, Any]]:
        """Each parameter's name, JSON type, default and allowed values (or None)."""
        return [{"name": f.name, "type": _JSON_TYPES.get(str(f.type), str(f.type)),
                 "default": None if f.default is MISSING else f.default,
                 "allowed": list(f.metadata["allowed"]) if "allowed" in f.metadata else None}
                for f in fields(cls)]


def check_known(params: Mapping[str, Any], accepted: list[str]) -> None:
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted) or 'none'}")


@dataclass(frozen=True)
class ProbeSettings:
    """How Hutchinson traces are sampled and when a layer's estimate stops (DESIGN §4):
    at a relative standard error under `tol` after `min_probes`, or at `max_probes`;
    `block` probes per layer per round (0: the engine's default)."""

    tol: float
    min_probes: int
    max_probes: int
    seed: int
    block: int

    def __post_init__(self):
        check_fraction("tol", self.tol)
        check_int("min_probes", self.min_probes, 2)
        check_int("max_probes", self.max_probes, 2)
        if self.min_probes > self.max_probes:
            raise ValueError("need 2 <= min_probes <= max_probes")
        check_int("block", self.block, 0)
        check_seed(self.seed)


@dataclass(frozen=True)
class HawqV2Config(MethodConfig):
    mode: str = _choice("exact", TRACE_MODES)
    tol: float = 0.05  # relative standard error to stop at
    min_probes: int = 8
    max_probes: int = 100
    seed: int = 0
    engine: str = _choice("auto", TRACE_ENGINES)
    block: int = 0  # probes per layer per round, evaluated together; 0: the engine's default
    backend: str = _choice("bitalloc", BACKENDS)

    def __post_init__(self):
        check_one_of("mode", self.mode, TRACE_MODES)
        _ = self.probes  # ProbeSettings checks tol, the probe counts, block and seed
        check_one_of("engine", self.engine, TRACE_ENGINES)
        if self.engine not in ("auto", "hvp") and self.mode != "exact":
            raise ValueError(f"engine={self.engine!r} needs mode='exact'")
        check_one_of("backend", self.backend, BACKENDS)
        if self.backend == "pyhessian" and self.mode != "exact":
            raise ValueError("backend='pyhessian' computes exact per-layer traces; use mode='exact'")

    @property
    def probes(self) -> ProbeSettings:
        return ProbeSettings(self.tol, self.min_probes, self.max_probes, self.seed, self.block)


@dataclass(frozen=True)
class FisherConfig(MethodConfig):
    tol: float = 0.05
    min_probes: int = 8
    max_probes: int = 100
    seed: int = 0
    engine: str = _choice("auto", FISHER_ENGINES)  # auto: gn (per-sample probes)
    block: int = 0

    def __post_init__(self):
        _ = self.probes  # ProbeSettings checks tol, the probe counts, block and seed
        check_one_of("engine", self.engine, FISHER_ENGINES)

    @property
    def probes(self) -> ProbeSettings:
        return ProbeSettings(self.tol, self.min_probes, self.max_probes, self.seed, self.block)


@dataclass(frozen=True)
class HawqV1Config(MethodConfig):
    tol: float = 1e-3  # relative change of the Rayleigh quotient between iterations to stop at
    max_iter: int = 100
    seed: int = 0
    backend: str = _choice("bitalloc", BACKENDS)

    def __post_init__(self):
        check_fraction("tol", self.tol)
        check_int("max_iter", self.max_iter, 2)
        check_seed(self.seed)
        check_one_of("backend", self.backend, BACKENDS)


@dataclass(frozen=True)
class EmpiricalConfig(MethodConfig):
    """No parameters: every value is measured."""


@dataclass(frozen=True)
class LRPConfig(MethodConfig):
    rules: str = _choice("auto", LRP_RULES)  # auto: captum without LayerNorm, else modified_gradient
    eps: float = 1e-6  # epsilon rule
    # modified_gradient's softmax: AttnLRP's rule, or attention weights held constant (CP-LRP)
    attention: str = _choice("attnlrp", LRP_ATTENTION)

    def __post_init__(self):
        check_one_of("rules", self.rules, LRP_RULES)
        check_positive("eps", self.eps)
        check_one_of("attention", self.attention, LRP_ATTENTION)


_TRACE_NAMES = HawqV2Config.accepted()


@dataclass(frozen=True)
class InterlayerConfig(MethodConfig):
    """`hessian` holds the per-layer trace settings (hawq_v2's parameters, given flat in
    the job's params) with Hessian pairs; measured pairs measure everything and take none."""

    window: int = 2
    pairs: str = _choice("hessian", PAIR_MODES)
    hessian: HawqV2Config | None = None

    def __post_init__(self):
        check_int("window", self.window, 1)
        check_one_of("pairs", self.pairs, PAIR_MODES)
        if self.pairs == "hessian" and self.hessian is None:
            object.__setattr__(self, "hessian", HawqV2Config())
        if self.pairs == "measured" and self.hessian is not None:
            raise ValueError("with pairs='measured' every term is measured: no trace settings apply")

    @classmethod
    def accepted(cls) -> list[str]:
        return ["window", "pairs", *_TRACE_NAMES]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> InterlayerConfig:
        check_known(params, cls.accepted())
        rest = {k: v for k, v in params.items() if k in _TRACE_NAMES}
        window, pairs = params.get("window", 2), params.get("pairs", "hessian")
        # checked before the trace settings, so their errors come first as they always did
        check_int("window", window, 1)
        check_one_of("pairs", pairs, PAIR_MODES)
        if pairs == "measured":
            if rest:
                raise ValueError(f"with pairs='measured' every term is measured, so "
                                 f"{', '.join(sorted(rest))} do not apply; accepted: window, pairs")
            return cls(window, pairs)
        return cls(window, pairs, HawqV2Config.from_params(rest))

    def meta_params(self) -> dict[str, Any]:
        trace = self.hessian.meta_params() if self.hessian is not None else {}
        return {**trace, "window": self.window, "pairs": self.pairs}

    @classmethod
    def parameters(cls) -> list[dict[str, Any]]:
        own = [p for p in super().parameters() if p["name"] != "hessian"]
        return own + [{**p, "requires": {"pairs": "hessian"}} for p in HawqV2Config.parameters()]


# --- the registry ---------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    name: str
    config: type[MethodConfig]
    module: str  # the estimator module: `estimate(ctx, config) -> SensitivityTable`
    summary: str

    def parse(self, params: Mapping[str, Any]) -> MethodConfig:
        try:
            return self.config.from_params(params)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("hawq_v1", HawqV1Config, "sensitivity.estimators.hawq_v1",
           "½·λ_max(H_ll)·‖ΔW_l(b)‖², λ_max by power iteration on each layer's Hessian block (HAWQ)"),
    Method("hawq_v2", HawqV2Config, "sensitivity.estimators.hawq_v2",
           "½·(Tr(H_ll)/n_l)·‖ΔW_l(b)‖², Hessian traces by Hutchinson probes (HAWQ-V2)"),
    Method("fisher", FisherConfig, "sensitivity.estimators.fisher",
           "as hawq_v2 with Gauss–Newton (Fisher) traces: one backward pass per probe for all "
           "layers, never negative"),
    Method("empirical", EmpiricalConfig, "sensitivity.estimators.empirical",
           "measured calibration loss increase with only layer l quantized (AdaQuant / MixDQ / AIMET)"),
    Method("lrp", LRPConfig, "sensitivity.estimators.lrp",
           "layer relevance by layer-wise relevance propagation × relative quantization error "
           "(LRP-QViT)"),
    Method("interlayer", InterlayerConfig, "sensitivity.estimators.interlayer",
           "hawq_v2's per-layer Ω plus pairwise terms of neighbouring layers, second order "
           "(Hessian) or measured"),
)}


# the methods that also estimate the sensitivity of a layer's input activations (a_bits < 16):
# hawq_v2 (Hessian trace w.r.t. the input), fisher (its Gauss–Newton trace), empirical (measured)
ACTIVATION_METHODS = ("hawq_v2", "fisher", "empirical")


def check_activation_method(method: str) -> None:
    if method not in ACTIVATION_METHODS:
        raise ValueError(f"method {method!r} does not estimate activation sensitivity; with "
                         f"activation bits below 16 use one of {', '.join(ACTIVATION_METHODS)}")


def method_names() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(method_names())}")
    return METHODS[name]


def parse_method_params(method: str, params: Mapping[str, Any]) -> MethodConfig:
    """The method's validated config; ValueError naming the method and the problem (an
    unknown method, unknown parameter names with the accepted ones, a bad value)."""
    return get_method(method).parse(params)


def describe() -> list[dict[str, Any]]:
    """The manifest's "methods": name, summary and parameters of each, by name."""
    return [{"name": m.name, "summary": m.summary, "parameters": m.config.parameters()}
            for m in (METHODS[n] for n in method_names())]
