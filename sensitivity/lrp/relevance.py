"""Per-layer relevance totals, the common result of both LRP paths."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerRelevance:
    output: float  # relevance at the output (Σ over the batch)
    signed: dict[str, float]  # Σ R at each layer's output
    absolute: dict[str, float]  # Σ |R| at each layer's output

    def add(self, other: LayerRelevance) -> LayerRelevance:
        return LayerRelevance(
            self.output + other.output,
            {k: v + other.signed[k] for k, v in self.signed.items()},
            {k: v + other.absolute[k] for k, v in self.absolute.items()},
        )

    def normalised(self) -> dict[str, float]:
        """R_l = Σ|R| at layer l over the total across layers (sums to 1)."""
        total = sum(self.absolute.values())
        n = len(self.absolute)
        return {k: (v / total if total > 0 else 1.0 / n) for k, v in self.absolute.items()}


def totals(relevance: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
    signed = {k: float(r.double().sum()) for k, r in relevance.items()}
    absolute = {k: float(r.double().abs().sum()) for k, r in relevance.items()}
    return signed, absolute
