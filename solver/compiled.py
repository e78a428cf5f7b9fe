"""A ``Problem`` compiled to arrays: tied layers merged into units, budgets in sum form.

A *unit* is one tied group or one untied layer; it takes one choice for all its
members. Its candidate choices are those every member has, narrowed by allowed
sets and pins. Costs and Ω of a unit are the sums over its members; a pair term
inside one unit becomes part of that unit's Ω.

Arrays are padded to the largest number of choices: Ω is +inf and costs are 0 on
padding, so an argmin never picks it. Budgets are kept in *sum form*: for
``avg_bits`` the limit times the total params, for the others the limit minus the
fixed cost, so every budget reads ``Σ_units cost[k, u, choice_u] <= rhs[k]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from solver.problem import Choice, Problem, format_choice

FEAS_RTOL = 1e-9
"""Relative slack allowed on a budget when checking a solution (float round-off)."""

RELAXABLE = frozenset({"pins", "allowed", "ties"})


@dataclass(frozen=True, eq=False)
class PairBlock:
    """Pairwise Ω between units ``u < v``: ``values[i, j]`` for choice i of u and j of v."""

    u: int
    v: int
    values: np.ndarray


@dataclass(frozen=True, eq=False)
class Compiled:
    names: tuple[str, ...]
    members: tuple[tuple[str, ...], ...]
    choices: tuple[tuple[Choice, ...], ...]
    omega: np.ndarray  # (U, C), +inf on padding and on no choice
    kinds: tuple[str, ...]
    costs: np.ndarray  # (K, U, C)
    rhs: np.ndarray  # (K,), sum form; +inf for a kind that is tracked but not limited
    pairs: tuple[PairBlock, ...]
    conflicts: tuple[str, ...]
    total_params: int
    fixed: tuple[float, ...]  # (K,) fixed cost per kind in the user's units

    @property
    def n_units(self) -> int:
        return len(self.names)

    def kind_index(self, kind: str) -> int:
        return self.kinds.index(kind)

    def to_user(self, k: int, value: float) -> float:
        """A sum-form cost of kind index ``k`` in the user's units."""
        if self.kinds[k] == "avg_bits":
            return value / self.total_params
        return value + self.fixed[k]

    def to_sum(self, k: int, limit: float) -> float:
        """A limit in the user's units as a sum-form right-hand side."""
        if self.kinds[k] == "avg_bits":
            return limit * self.total_params
        return limit - self.fixed[k]

    def with_rhs(self, rhs: np.ndarray) -> Compiled:
        return replace(self, rhs=np.asarray(rhs, dtype=float))

    def with_omega(self, omega: np.ndarray, pairs: tuple[PairBlock, ...] = ()) -> Compiled:
        return replace(self, omega=omega, pairs=pairs)

    @cached_property
    def pair_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u, v, values) of every pair block as arrays: (P,), (P,), (P, C, C)."""
        width = self.omega.shape[1]
        if not self.pairs:
            return np.zeros(0, dtype=int), np.zeros(0, dtype=int), np.zeros((0, width, width))
        return (
            np.array([p.u for p in self.pairs], dtype=int),
            np.array([p.v for p in self.pairs], dtype=int),
            np.stack([p.values for p in self.pairs]),
        )

    def objective(self, assign: np.ndarray) -> float:
        units = np.arange(self.n_units)
        total = float(self.omega[units, assign].sum())
        if self.pairs:
            pu, pv, values = self.pair_arrays
            total += float(values[np.arange(len(pu)), assign[pu], assign[pv]].sum())
        return total

    def used(self, assign: np.ndarray) -> np.ndarray:
        """Sum-form use of every budget kind by an assignment (choice index per unit)."""
        units = np.arange(self.n_units)
        return self.costs[:, units, assign].sum(axis=1)

    def smallest(self) -> np.ndarray:
        """Smallest sum-form cost of every kind, each budget alone (overrides in place);
        a unit left without any choice counts 0."""
        costs = np.where(np.isfinite(self.omega)[None], self.costs, np.inf).min(axis=2)
        return np.where(np.isfinite(costs), costs, 0.0).sum(axis=1)

    def fits(self, used: np.ndarray) -> bool:
        return bool(np.all(used <= self.rhs + FEAS_RTOL * np.maximum(np.abs(self.rhs), 1.0)))

    def layer_choices(self, assign: np.ndarray) -> dict[str, Choice]:
        return {
            member: self.choices[u][int(assign[u])]
            for u, names in enumerate(self.members)
            for member in names
        }


def compile_problem(
    problem: Problem,
    kinds: Iterable[str] | None = None,
    *,
    relax: frozenset[str] = frozenset(),
) -> Compiled:
    """Compile ``problem``; ``kinds`` are the cost kinds to track (default: its budgets).

    ``relax`` drops some overrides ("pins", "allowed", "ties") — used to explain an
    infeasible request.
    """
    if not relax <= RELAXABLE:
        raise ValueError(f"relax must be a subset of {sorted(RELAXABLE)}, got {sorted(relax)}")
    kinds = tuple(kinds) if kinds is not None else tuple(b.kind for b in problem.budgets)
    for kind in kinds:
        for layer in problem.layers:
            for choice, option in layer.options.items():
                if kind not in option.costs:
                    raise ValueError(
                        f"a {kind} budget needs a {kind} cost on every option: layer "
                        f"{layer.name} option {format_choice(choice)} has none"
                    )

    groups = _units(problem, tie="ties" not in relax)
    pins = {} if "pins" in relax else dict(problem.pins)
    allowed = {} if "allowed" in relax else dict(problem.allowed)
    by_name = {layer.name: layer for layer in problem.layers}

    names, members, choices, conflicts = [], [], [], []
    for unit_name, layer_names in groups:
        cands, why = _candidates(unit_name, [by_name[n] for n in layer_names], pins, allowed)
        names.append(unit_name)
        members.append(tuple(layer_names))
        choices.append(cands)
        if why:
            conflicts.append(why)

    n_units = len(names)
    width = max(1, max(len(c) for c in choices))
    # rows (unit, choice index, Ω, cost of each kind), summed over a unit's members
    where, rows = [], []
    unit_of = {}
    for u, (layer_names, cands) in enumerate(zip(members, choices)):
        for name in layer_names:
            unit_of[name] = u
            options = by_name[name].options
            for i, choice in enumerate(cands):
                option = options[choice]
                where.append(u * width + i)
                rows.append([option.omega] + [option.costs[kind] for kind in kinds])
    table = np.zeros((n_units * width, 1 + len(kinds)))
    if rows:
        np.add.at(table, np.array(where, dtype=int), np.array(rows, dtype=float))
    filled = np.zeros(n_units * width, dtype=bool)
    filled[where] = True
    omega = np.where(filled, table[:, 0], np.inf).reshape(n_units, width)
    costs = np.ascontiguousarray(table[:, 1:].T).reshape(len(kinds), n_units, width)

    blocks: dict[tuple[int, int], np.ndarray] = {}
    # (options of a, of b, candidates of a's unit, of b's unit, a's unit first)
    #   -> {(ca, cb): flat index in the block, -1 where a candidate set left it out}
    flat_index: dict[tuple, dict] = {}
    for pair in problem.pairs:
        ua, ub = unit_of[pair.a], unit_of[pair.b]
        if ua == ub:
            index = {c: i for i, c in enumerate(choices[ua])}
            for (ca, cb), value in pair.values.items():
                if ca == cb and ca in index:
                    omega[ua, index[ca]] += value
            continue
        options_a, options_b = tuple(by_name[pair.a].options), tuple(by_name[pair.b].options)
        key = (options_a, options_b, choices[ua], choices[ub], ua < ub)
        if key not in flat_index:
            index_a = {c: i for i, c in enumerate(choices[ua])}
            index_b = {c: j for j, c in enumerate(choices[ub])}
            flat_index[key] = {
                (ca, cb): (
                    -1
                    if ca not in index_a or cb not in index_b
                    else index_a[ca] * width + index_b[cb]
                    if ua < ub
                    else index_b[cb] * width + index_a[ca]
                )
                for ca in options_a
                for cb in options_b
            }
        count = len(pair.values)
        flat = np.fromiter(map(flat_index[key].__getitem__, pair.values), dtype=int, count=count)
        values = np.fromiter(pair.values.values(), dtype=float, count=count)
        block = blocks.get((min(ua, ub), max(ua, ub)))
        if block is None:
            block = blocks[min(ua, ub), max(ua, ub)] = np.zeros((width, width))
        np.add.at(block.reshape(-1), flat[flat >= 0], values[flat >= 0])
    pairs = tuple(PairBlock(u, v, m) for (u, v), m in sorted(blocks.items()) if m.any())

    fixed = tuple(problem.fixed_costs.get(kind, 0.0) for kind in kinds)
    rhs = np.full(len(kinds), np.inf)
    compiled = Compiled(
        names=tuple(names),
        members=tuple(members),
        choices=tuple(choices),
        omega=omega,
        kinds=kinds,
        costs=costs,
        rhs=rhs,
        pairs=pairs,
        conflicts=tuple(conflicts),
        total_params=problem.total_params,
        fixed=fixed,
    )
    for k, kind in enumerate(kinds):
        budget = problem.budget(kind)
        if budget is not None:
            rhs[k] = compiled.to_sum(k, budget.limit)
    return compiled


def _units(problem: Problem, *, tie: bool) -> list[tuple[str, list[str]]]:
    """(unit name, member layer names) in layer order; a group is named by its group."""
    units: dict[str, list[str]] = {}
    order: list[tuple[str, list[str]]] = []
    for layer in problem.layers:
        if tie and layer.group is not None:
            if layer.group not in units:
                units[layer.group] = []
                order.append((f"group {layer.group}", units[layer.group]))
            units[layer.group].append(layer.name)
        else:
            order.append((layer.name, [layer.name]))
    return order


def _candidates(
    unit_name: str, layers: Sequence, pins: dict[str, Choice], allowed: dict[str, frozenset]
) -> tuple[tuple[Choice, ...], str | None]:
    """The unit's candidate choices, and why there are none when that happens."""
    label = unit_name if len(layers) == 1 else f"tied {unit_name} ({', '.join(x.name for x in layers)})"
    common = set(layers[0].options)
    for layer in layers[1:]:
        common &= set(layer.options)
    if not common:
        return (), f"{label} has no choice common to all its members"
    narrowed = set(common)
    for layer in layers:
        if layer.name in allowed:
            narrowed &= allowed[layer.name]
    if not narrowed:
        return (), f"the allowed sets of {label} leave no common choice"
    pinned = {layer.name: pins[layer.name] for layer in layers if layer.name in pins}
    if len(set(pinned.values())) > 1:
        listed = ", ".join(f"{n} {format_choice(c)}" for n, c in pinned.items())
        return (), f"pins on {listed} disagree in {label}"
    if pinned:
        (name, choice), *_ = pinned.items()
        if choice not in narrowed:
            return (), (
                f"pin on {name} {format_choice(choice)} is outside the choices left to {label}: "
                f"{', '.join(format_choice(c) for c in sorted(narrowed))}"
            )
        return (choice,), None
    return tuple(sorted(narrowed)), None
