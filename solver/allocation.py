"""What the solver returns: an ``Allocation``, and an ``Infeasible`` explanation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from solver.problem import BUDGET_UNITS, Choice

STATUSES = ("optimal", "feasible", "infeasible", "timeout")


def format_cost(kind: str, value: float) -> str:
    if kind == "size_bytes":
        return f"{value / 1e6:.4g} MB"
    if kind == "avg_bits":
        return f"{value:.4g} bits/weight"
    return f"{value:.4g} {BUDGET_UNITS[kind]}"


@dataclass(frozen=True)
class BudgetReach:
    """How small one budget kind can get, in the user's units."""

    kind: str
    limit: float
    smallest: float  # this budget alone, with every override in place
    smallest_jointly: float | None = None  # with the other budgets held (None: not computed)

    @property
    def reachable_alone(self) -> bool:
        return self.smallest <= self.limit * (1 + 1e-9) + 1e-12


@dataclass(frozen=True)
class Blocker:
    """Overrides of one type ("pins", "allowed" or "ties") that make a budget unreachable."""

    what: str
    layers: tuple[str, ...]
    kind: str | None  # the budget they block; None for a contradiction among overrides
    share: float | None  # fraction of that budget the blocking layers use
    smallest_without: float | None  # smallest reachable value with these overrides dropped
    detail: str


@dataclass(frozen=True)
class Infeasible:
    """Why no allocation meets the request; ``str()`` is a one-line summary."""

    budgets: tuple[BudgetReach, ...] = ()
    conflicts: tuple[str, ...] = ()
    blockers: tuple[Blocker, ...] = ()

    def __str__(self) -> str:
        parts = [f"conflict: {c}" for c in self.conflicts]
        for b in self.budgets:
            if not b.reachable_alone:
                parts.append(
                    f"{b.kind} limit {format_cost(b.kind, b.limit)} is below the smallest reachable "
                    f"{format_cost(b.kind, b.smallest)}"
                )
        if not parts and len(self.budgets) > 1:
            joint = ", ".join(
                f"{b.kind} >= {format_cost(b.kind, b.smallest_jointly)} (limit "
                f"{format_cost(b.kind, b.limit)})"
                for b in self.budgets
                if b.smallest_jointly is not None
            )
            parts.append(
                "each budget is reachable alone but not all at once"
                + (f"; with the others held: {joint}" if joint else "")
            )
        parts += [b.detail for b in self.blockers]
        return "infeasible: " + "; ".join(parts or ["no allocation meets every constraint"])


@dataclass(frozen=True)
class Allocation:
    """The solver's answer.

    ``objective`` is ΣΩ plus pair terms; ``budget_use[kind] = (used, limit)`` in the
    user's units (avg_bits: Σ params·bits per weight / Σ params). ``gap`` is the
    proven relative gap (objective - lower bound) / |objective|; ``certificate`` says
    how optimality was shown: "mip" (the integer program) or "bound" (the Lagrangian
    bound left one option per layer, or closed the gap).
    """

    status: str
    objective: float | None
    choices: Mapping[str, Choice]
    budget_use: Mapping[str, tuple[float, float]]
    solve_time_s: float
    gap: float | None
    backend: str
    explanation: Infeasible | None = None
    certificate: str | None = None
    lower_bound: float | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status in ("optimal", "feasible")
