"""The sensitivity table every estimator returns (DESIGN §4): Ω[layer][choice],
per-layer statistics, optional pairwise terms, and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernels.scheme import Choice, choice_key, parse_choice_key

__all__ = ["Choice", "SensitivityTable", "choice_key", "parse_choice_key"]


@dataclass
class SensitivityTable:
    method: str
    omega: dict[str, dict[Choice, float]]  # layer -> choice -> expected loss increase
    layer_stats: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. trace, trace_se, probes
    pairs: dict[tuple[str, str], dict[tuple[Choice, Choice], float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # method params, wall time, probes used, ...

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "omega": {n: {choice_key(c): v for c, v in row.items()} for n, row in self.omega.items()},
            "layer_stats": self.layer_stats,
            "pairs": [
                {"a": a, "b": b, "values": {f"{choice_key(ca)}|{choice_key(cb)}": v
                                            for (ca, cb), v in vals.items()}}
                for (a, b), vals in self.pairs.items()
            ],
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SensitivityTable:
        pairs = {}
        for p in data.get("pairs", []):
            vals = {}
            for key, v in p["values"].items():
                ka, kb = key.split("|")
                vals[(parse_choice_key(ka), parse_choice_key(kb))] = v
            pairs[(p["a"], p["b"])] = vals
        return cls(
            method=data["method"],
            omega={n: {parse_choice_key(k): v for k, v in row.items()} for n, row in data["omega"].items()},
            layer_stats=data.get("layer_stats", {}),
            pairs=pairs,
            meta=data.get("meta", {}),
        )
