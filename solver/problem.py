"""The allocation problem: layers, their candidate choices, budgets and overrides.

Every class here is a frozen dataclass that checks its input on construction and
raises ``ValueError`` with a message naming the offending layer or field. Mappings
are copied into read-only views, so a ``Problem`` cannot change after it is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

Choice = tuple[int, int]
"""(w_bits, a_bits): weight bits and activation bits. Which widths exist is the
quantization scheme's business (kernels.scheme); the solver only needs positive ints."""
BUDGET_KINDS = ("avg_bits", "size_bytes", "bops", "latency_ms")
BUDGET_UNITS = {"avg_bits": "bits/weight", "size_bytes": "B", "bops": "BOPs", "latency_ms": "ms"}


def format_choice(choice: Choice) -> str:
    return f"({choice[0]},{choice[1]})"


def check_choice(choice: object, where: str) -> Choice:
    """Return ``choice`` as a (w_bits, a_bits) tuple or raise ValueError."""
    if (
        not isinstance(choice, tuple)
        or len(choice) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) for b in choice)
    ):
        raise ValueError(f"{where}: a choice is a (w_bits, a_bits) tuple of ints, got {choice!r}")
    for role, bits in zip(("w_bits", "a_bits"), choice):
        if bits < 1:
            raise ValueError(f"{where}: {role}={bits} must be a positive number of bits")
    return choice


def _check_kind(kind: object, where: str) -> str:
    if kind not in BUDGET_KINDS:
        raise ValueError(f"{where}: unknown budget kind {kind!r}; expected one of {BUDGET_KINDS}")
    return kind  # type: ignore[return-value]


def _check_number(value: object, where: str, *, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    if nonnegative and value < 0:
        raise ValueError(f"{where}: must be >= 0, got {value!r}")
    return float(value)


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Option:
    """One candidate choice of one layer.

    ``omega`` is the predicted loss increase Ω (lower is better). ``costs`` maps a
    budget kind to this option's cost in that kind: ``avg_bits`` -> params × bits per
    weight (bits, scale overhead included), ``size_bytes`` -> bytes, ``bops`` ->
    MACs × w_bits × a_bits, ``latency_ms`` -> milliseconds. A kind that is missing
    cannot be used as a budget for this layer.
    """

    omega: float
    costs: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "omega", _check_number(self.omega, "Option.omega"))
        if not isinstance(self.costs, Mapping):
            raise ValueError(f"Option.costs must be a mapping, got {type(self.costs).__name__}")
        costs = {
            _check_kind(k, "Option.costs"): _check_number(v, f"Option.costs[{k!r}]", nonnegative=True)
            for k, v in self.costs.items()
        }
        object.__setattr__(self, "costs", _frozen(costs))


@dataclass(frozen=True)
class Layer:
    """A quantizable layer and its candidate options; ``group`` ties layers together."""

    name: str
    params: int
    options: Mapping[Choice, Option]
    group: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Layer.name must be a non-empty string, got {self.name!r}")
        if isinstance(self.params, bool) or not isinstance(self.params, int) or self.params <= 0:
            raise ValueError(f"layer {self.name}: params must be a positive int, got {self.params!r}")
        if not isinstance(self.options, Mapping) or not self.options:
            raise ValueError(f"layer {self.name}: needs at least one option")
        for choice, option in self.options.items():
            check_choice(choice, f"layer {self.name}")
            if not isinstance(option, Option):
                raise ValueError(f"layer {self.name}: option {choice} is not an Option")
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise ValueError(f"layer {self.name}: group must be a non-empty string or None")
        object.__setattr__(self, "options", _frozen(self.options))


@dataclass(frozen=True)
class Budget:
    """A limit on one cost kind.

    ``avg_bits``: average bits per weight over all layers' params (overhead
    included); ``size_bytes``: total model bytes (fixed bytes included); ``bops``;
    ``latency_ms``.
    """

    kind: str
    limit: float

    def __post_init__(self) -> None:
        _check_kind(self.kind, "Budget.kind")
        limit = _check_number(self.limit, f"Budget({self.kind}).limit", nonnegative=True)
        object.__setattr__(self, "limit", limit)


@dataclass(frozen=True)
class PairTerm:
    """Pairwise Ω between layers ``a`` and ``b``, added to the objective.

    ``values[(choice_a, choice_b)]``; a combination that is missing counts as 0.
    """

    a: str
    b: str
    values: Mapping[tuple[Choice, Choice], float]

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ValueError(f"PairTerm: a and b must be different layers, got {self.a!r} twice")
        values = {}
        for key, value in self.values.items():
            if not isinstance(key, tuple) or len(key) != 2:
                raise ValueError(f"PairTerm({self.a}, {self.b}): keys are (choice_a, choice_b)")
            ca = check_choice(key[0], f"PairTerm({self.a}, {self.b})")
            cb = check_choice(key[1], f"PairTerm({self.a}, {self.b})")
            values[(ca, cb)] = _check_number(value, f"PairTerm({self.a}, {self.b})[{key}]")
        object.__setattr__(self, "values", _frozen(values))


@dataclass(frozen=True)
class Problem:
    """Layers, budgets (any combination, at most one per kind) and per-layer overrides.

    ``fixed_costs[kind]`` is the cost outside the quantizable layers (e.g. unquantized
    bytes for ``size_bytes``); ``avg_bits`` has none, it averages over layer params.
    ``pins`` force a layer's choice, ``allowed`` restricts a layer's choice set.
    """

    layers: Sequence[Layer]
    budgets: Sequence[Budget] = ()
    fixed_costs: Mapping[str, float] = field(default_factory=dict)
    pins: Mapping[str, Choice] = field(default_factory=dict)
    allowed: Mapping[str, frozenset[Choice]] = field(default_factory=dict)
    pairs: Sequence[PairTerm] = ()

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("Problem needs at least one layer")
        by_name: dict[str, Layer] = {}
        for layer in layers:
            if not isinstance(layer, Layer):
                raise ValueError(f"Problem.layers: expected Layer, got {type(layer).__name__}")
            if layer.name in by_name:
                raise ValueError(f"Problem.layers: duplicate layer name {layer.name!r}")
            by_name[layer.name] = layer

        budgets = tuple(self.budgets)
        kinds = [b.kind for b in budgets]
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise ValueError(f"Problem.budgets: more than one {kind} budget")

        fixed = {}
        for kind, value in self.fixed_costs.items():
            _check_kind(kind, "Problem.fixed_costs")
            if kind == "avg_bits":
                raise ValueError(
                    "Problem.fixed_costs: avg_bits averages over the quantizable layers' params "
                    "only; it has no fixed cost (use size_bytes for unquantized bytes)"
                )
            fixed[kind] = _check_number(value, f"Problem.fixed_costs[{kind!r}]", nonnegative=True)

        def known(name: str, where: str) -> Layer:
            if name not in by_name:
                raise ValueError(f"{where}: unknown layer {name!r}")
            return by_name[name]

        pins = {}
        for name, choice in self.pins.items():
            layer = known(name, "Problem.pins")
            check_choice(choice, f"pin on {name}")
            if choice not in layer.options:
                raise ValueError(
                    f"pin on {name}: {format_choice(choice)} is not one of its options "
                    f"{sorted(layer.options)}"
                )
            pins[name] = choice

        allowed = {}
        for name, choices in self.allowed.items():
            layer = known(name, "Problem.allowed")
            choices = frozenset(choices)
            if not choices:
                raise ValueError(f"allowed set for {name} is empty")
            for choice in choices:
                check_choice(choice, f"allowed set for {name}")
                if choice not in layer.options:
                    raise ValueError(
                        f"allowed set for {name}: {format_choice(choice)} is not one of its "
                        f"options {sorted(layer.options)}"
                    )
            allowed[name] = choices

        pairs = tuple(self.pairs)
        for pair in pairs:
            if not isinstance(pair, PairTerm):
                raise ValueError(f"Problem.pairs: expected PairTerm, got {type(pair).__name__}")
            la = known(pair.a, "PairTerm.a")
            lb = known(pair.b, "PairTerm.b")
            for ca, cb in pair.values:
                if ca not in la.options or cb not in lb.options:
                    raise ValueError(
                        f"PairTerm({pair.a}, {pair.b}): ({format_choice(ca)}, {format_choice(cb)}) "
                        "is not a combination of the two layers' options"
                    )

        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "budgets", budgets)
        object.__setattr__(self, "fixed_costs", _frozen(fixed))
        object.__setattr__(self, "pins", _frozen(pins))
        object.__setattr__(self, "allowed", _frozen(allowed))
        object.__setattr__(self, "pairs", pairs)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def budget(self, kind: str) -> Budget | None:
        return next((b for b in self.budgets if b.kind == kind), None)
