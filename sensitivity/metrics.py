"""Quality metrics with a direction (DESIGN §3): accuracy and cosine are
higher-is-better, perplexity and KL lower-is-better; a "drop" is always the change
for the worse. Free of torch: the service and the dashboard read the directions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    description: str = ""

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def drop(self, reference: float, value: float) -> float:
        """How much worse `value` is than `reference` (negative when it is better)."""
        return reference - value if self.higher_is_better else value - reference

    def better(self, a: float, b: float) -> bool:
        """True when `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b
