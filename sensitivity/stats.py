"""Running mean and standard error in float64, and the stopping rule of DESIGN §4."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class RunningMean:
    """Welford's running mean/variance of probe samples, in float64."""

    n: int = 0
    mean: float = 0.0
    _m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self._m2 += d * (x - self.mean)

    @property
    def stderr(self) -> float:
        """Standard error of the mean; infinite until two samples exist."""
        if self.n < 2:
            return math.inf
        return math.sqrt(self._m2 / (self.n - 1) / self.n)

    @property
    def rel_error(self) -> float:
        """Standard error relative to |mean| (infinite for a zero mean)."""
        return self.stderr / abs(self.mean) if self.mean else math.inf

    def to_state(self) -> list[float]:
        return [self.n, self.mean, self._m2]

    @classmethod
    def from_state(cls, state: list[float]) -> RunningMean:
        return cls(int(state[0]), float(state[1]), float(state[2]))

    def probes_needed(self, tol: float, max_probes: int) -> int:
        """Probes the stopping rule will likely need, from the spread seen so far."""
        if self.n < 2 or not math.isfinite(self.rel_error):
            return max_probes
        return min(max_probes, max(self.n, math.ceil(self.n * (self.rel_error / tol) ** 2)))

    def done(self, tol: float, min_probes: int, max_probes: int) -> bool:
        """A real confidence test: stop once the relative standard error is under
        `tol` (after `min_probes`), or at the cap. Uses |mean|, so a negative mean
        does not stop early (PyHessian's rule does)."""
        if self.n >= max_probes:
            return True
        return self.n >= min_probes and self.rel_error <= tol
