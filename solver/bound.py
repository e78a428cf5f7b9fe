"""Lagrangian bound, a greedy incumbent, and option elimination (presolve for the ILP).

For multipliers λ >= 0 on the budgets, every feasible assignment x satisfies

    Ω(x) >= Σ_u min_c M[u, c] - λ·rhs + Σ_u r[u, x_u] = L(λ) + Σ_u r[u, x_u],

where M = W + Σ_k λ_k cost_k, r = M - min_c M is the reduced cost, and W is a
separable lower bound of Ω (pair terms split into a row part charged to one unit
and a column part charged to the other; the remainder is >= 0). So an option whose
reduced cost exceeds ``upper - L(λ)`` (with ``upper`` the Ω of any feasible
assignment) is in no optimal solution and can be dropped. With the multipliers
from a subgradient ascent, that leaves a small core for the integer program; often
every unit keeps one option and the incumbent is proven optimal outright.

When the pair terms form a chain of small bandwidth in unit order (``solver.chain``),
the bound is exact instead: min over x of Ω(x) + λ·(cost(x) - rhs) by dynamic
programming, maximised over λ one multiplier at a time, and r is the DP's
min-marginal minus its minimum. The subgradient then runs on the pair-free problem,
only to find multipliers to start from (its value is no bound there).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from solver.chain import Chain, fits
from solver.compiled import Compiled

_ITERATIONS = 200
_SWEEPS = 50  # message-passing sweeps when there are pair terms
_THETA_STOP = 1e-3  # subgradient step scale at which the exact line searches take over
_WARM_ITERATIONS = 20  # subgradient steps from a similar problem's multipliers


@dataclass(frozen=True, eq=False)
class Bound:
    lower: float  # valid lower bound on the optimal Ω (-inf when unknown)
    upper: float  # Ω of ``incumbent`` (+inf when there is none)
    incumbent: np.ndarray | None  # a feasible assignment (choice index per unit)
    keep: np.ndarray  # (U, C) bool: options that may be in an optimal solution
    multipliers: np.ndarray  # (K,) λ per budget kind, in Ω per sum-form cost unit (0 if unlimited)
    reduced: np.ndarray  # (U, C) reduced cost of every option at those multipliers, in Ω
    complete: bool = True  # False when the deadline cut the refinement short


class _Separable:
    """W(λ): per-unit Lagrangian cost that never exceeds the true one of any assignment.

    Each unit shares its own cost ω + λ·cost equally between itself and its pair
    blocks; a block B[i, j] = P[i, j] + share_u[i] + share_v[j] is then bounded below
    by its row minima (charged to u) plus the column minima of what is left (charged
    to v). Without pair terms W(λ) is exactly ω + λ·cost.
    """

    def __init__(self, c: Compiled, wn: np.ndarray, scale: float):
        self.valid = np.isfinite(c.omega)
        self.wn = wn
        self.pu = np.array([p.u for p in c.pairs], dtype=int)
        self.pv = np.array([p.v for p in c.pairs], dtype=int)
        self.degree = np.ones(c.n_units)
        np.add.at(self.degree, self.pu, 1)
        np.add.at(self.degree, self.pv, 1)
        if c.pairs:
            ok = self.valid[self.pu][:, :, None] & self.valid[self.pv][:, None, :]
            self.blocks = np.where(ok, np.stack([p.values for p in c.pairs]) / scale, np.inf)
        self.colours = _edge_colours(self.pu, self.pv)

    def __call__(self, lam: np.ndarray, an: np.ndarray) -> np.ndarray:
        m = self.wn + _weigh(lam, an)
        if not len(self.pu):
            return m
        share = np.where(self.valid, m, 0.0) / self.degree[:, None]
        block = self.blocks + share[self.pu][:, :, None] + share[self.pv][:, None, :]
        rows = np.min(block, axis=2)
        rows = np.where(np.isfinite(rows), rows, 0.0)
        cols = np.min(block - rows[:, :, None], axis=1)
        cols = np.where(np.isfinite(cols), cols, 0.0)
        w = np.where(self.valid, share, np.inf)
        np.add.at(w, self.pu, rows)
        np.add.at(w, self.pv, cols)
        return w

    def message_passing(self, lam: np.ndarray, an: np.ndarray, sweeps: int, deadline: float):
        """A tighter bound by MPLP (Globerson & Jaakkola 2007), min-sum form.

        Messages μ move cost between a pair block and its two units; any messages
        keep Σ_u b_u(x_u) + Σ_e θ'_e(x_u, x_v) equal to the Lagrangian cost, so
        Σ_u min b_u + Σ_e min θ'_e is a valid bound and b_u - min b_u a valid
        reduced cost. Edges of one colour share no unit and update together.
        Returns (bound without the -λ·rhs term, per-unit beliefs b).
        """
        big = 1e12
        belief = np.where(self.valid, self.wn + _weigh(lam, an), big)
        theta = np.where(np.isfinite(self.blocks), self.blocks, big)
        mu_u = np.zeros(theta.shape[:2])
        mu_v = np.zeros(theta.shape[:2])
        best, best_belief = -np.inf, belief
        for sweep in range(sweeps + 1):
            edge = theta - mu_u[:, :, None] - mu_v[:, None, :]
            value = float(belief.min(axis=1).sum() + edge.min(axis=(1, 2)).sum())
            if value > best + 1e-12 * abs(value):
                best, best_belief = value, belief.copy()
            elif sweep:
                break
            if sweep == sweeps or time.perf_counter() > deadline:
                break
            for idx in self.colours:
                u, v = self.pu[idx], self.pv[idx]
                bu = belief[u] - mu_u[idx]
                bv = belief[v] - mu_v[idx]
                block = theta[idx]
                new_u = 0.5 * (np.min(block + bv[:, None, :], axis=2) - bu)
                new_v = 0.5 * (np.min(block + bu[:, :, None], axis=1) - bv)
                belief[u] = bu + new_u
                belief[v] = bv + new_v
                mu_u[idx], mu_v[idx] = new_u, new_v
        return best, np.where(self.valid, best_belief, np.inf)


def _weigh(lam: np.ndarray, an: np.ndarray) -> np.ndarray:
    """Σ_k λ_k · an[k] as one matrix product (np.tensordot costs more in its Python setup)."""
    if not len(lam):
        return np.zeros(an.shape[1:])
    return (lam @ an.reshape(len(lam), -1)).reshape(an.shape[1:])


def _edge_colours(pu: np.ndarray, pv: np.ndarray) -> list[np.ndarray]:
    """Greedy edge colouring: edges of one colour share no unit."""
    used: dict[int, set[int]] = {}
    colour_of = []
    for u, v in zip(pu.tolist(), pv.tolist()):
        taken = used.setdefault(u, set()) | used.setdefault(v, set())
        colour = next(k for k in range(len(taken) + 1) if k not in taken)
        used[u].add(colour)
        used[v].add(colour)
        colour_of.append(colour)
    colours = np.array(colour_of, dtype=int)
    return [np.flatnonzero(colours == k) for k in range(colours.max() + 1)] if len(colours) else []


def lagrangian_bound(
    c: Compiled,
    *,
    iterations: int = _ITERATIONS,
    close_gap: float = 0.0,
    start: Bound | None = None,
    deadline: float = math.inf,
) -> Bound:
    """Bound the optimum of ``c`` and find a feasible assignment when one is easy to find.

    Stops once the relative gap is within ``close_gap``. ``start`` (a bound of a
    similar problem, e.g. the previous point of a budget sweep) seeds the
    multipliers and, where it still fits, the incumbent. Past ``deadline`` (a
    ``time.perf_counter()`` value) it stops refining and returns what it has.
    """
    units = np.arange(c.n_units)
    base = np.min(c.omega, axis=1)
    spread = np.where(np.isfinite(c.omega), c.omega - base[:, None], np.nan)
    scale = float(np.nanmean(np.nanmax(spread, axis=1))) or 1.0
    wn = (c.omega - base[:, None]) / scale
    offset = float(base.sum())
    chain = Chain(c, scale) if c.pairs and fits(c) else None
    # with a chain of pair terms the dynamic program gives the exact bound at the end;
    # the cheap pair-free relaxation only finds multipliers to start it from
    separable = _Separable(c.with_omega(c.omega) if chain else c, wn, scale)

    active = np.flatnonzero(np.isfinite(c.rhs))
    norm = np.array([_row_scale(c, k) for k in active])
    an = c.costs[active] / norm[:, None, None]
    bn = c.rhs[active] / norm

    def true_n(assign: np.ndarray) -> float:
        return (c.objective(assign) - offset) / scale

    lam = np.zeros(len(active))
    if start is not None:
        lam = start.multipliers[active] * norm / scale
    best_lower, best_lam = -np.inf, lam.copy()
    incumbent = _feasible_from(lam, wn, an, bn, units)
    if incumbent is not None:
        incumbent = improve(c, incumbent)
    upper = true_n(incumbent) if incumbent is not None else np.inf
    if start is not None and start.incumbent is not None and c.fits(c.used(start.incumbent)):
        warm = improve(c, start.incumbent)
        if true_n(warm) < upper:
            incumbent, upper = warm, true_n(warm)
    improved = incumbent  # improve() has run on it: no need to run it again
    theta, stall = (0.25 if start is not None else 1.0), 0
    complete = True
    closed = max(1e-12, close_gap * abs(upper * scale + offset) / scale) if np.isfinite(upper) else 1e-12
    if start is not None:  # the line searches below finish from a nearby point
        iterations = min(iterations, _WARM_ITERATIONS)
    for _ in range(iterations if len(active) or c.pairs else 1):
        m = separable(lam, an)
        assign = np.argmin(m, axis=1)
        lower = float(m[units, assign].sum() - lam @ bn)
        if lower > best_lower + 1e-12 * abs(lower):
            best_lower, best_lam, stall = lower, lam.copy(), 0
        else:
            stall += 1
            if stall >= 10:
                theta, stall = theta / 2, 0
        sub = an[:, units, assign].sum(axis=1) - bn
        if np.all(sub <= 1e-12 * np.maximum(np.abs(bn), 1.0)):
            value = true_n(assign)
            if value < upper:
                incumbent, upper = assign, value
        if upper - best_lower <= closed or theta < _THETA_STOP or not len(active):
            break
        if time.perf_counter() > deadline:
            complete = False
            break
        step_sub = np.where((lam > 0) | (sub > 0), sub, 0.0)
        norm2 = float(step_sub @ step_sub)
        if norm2 == 0.0:
            break
        target = upper if np.isfinite(upper) else best_lower + 0.05 * c.n_units
        lam = np.maximum(0.0, lam + theta * (target - lower) / norm2 * step_sub)

    if chain is not None:
        # one pass of the dynamic program even past the deadline: it is the only valid
        # lower bound here (the pair-free value above is none), so the gap stays known
        lam, lower, found = _chain_ascent(chain, wn, an, bn, best_lam, deadline, tol=0.1 * closed)
        best_lower, best_lam = lower, lam
        for assign in found:
            value = true_n(assign)
            if value < upper:
                incumbent, upper = assign, value
    elif len(active) and upper - best_lower > closed and time.perf_counter() < deadline:
        for lam in _polish(best_lam, separable, an, bn, units, rounds=1 if c.pairs else 2):
            m = separable(lam, an)
            assign = np.argmin(m, axis=1)
            lower = float(m[units, assign].sum() - lam @ bn)
            if lower > best_lower:
                best_lower, best_lam = lower, lam
            if np.all(an[:, units, assign].sum(axis=1) <= bn + 1e-12 * np.maximum(np.abs(bn), 1.0)):
                value = true_n(assign)
                if value < upper:
                    incumbent, upper = assign, value

    if incumbent is not None and incumbent is not improved:
        incumbent = improve(c, incumbent)
        upper = true_n(incumbent)

    if chain is not None:
        if np.isfinite(best_lower) and upper - best_lower > closed and time.perf_counter() < deadline:
            m = chain.min_marginals(wn + _weigh(best_lam, an))
        else:  # proven already, or no bound: reduced costs of 0 eliminate nothing
            m = np.where(np.isfinite(c.omega), 0.0, np.inf)
    else:
        m = separable(best_lam, an)
    if c.pairs and chain is None and upper - best_lower > closed and time.perf_counter() < deadline:
        value, beliefs = separable.message_passing(best_lam, an, _SWEEPS, deadline)
        if value - best_lam @ bn > best_lower:
            best_lower, m = value - best_lam @ bn, beliefs
    reduced = (m - np.min(m, axis=1, keepdims=True)) * scale
    lower = best_lower * scale + offset
    value = upper * scale + offset if incumbent is not None else np.inf
    return Bound(
        lower=lower,
        upper=value,
        incumbent=incumbent,
        keep=_keep(c, reduced, lower, value, incumbent),
        multipliers=_raw(c, active, best_lam * scale / norm),
        reduced=reduced,
        complete=complete and time.perf_counter() <= deadline,
    )


def with_incumbent(c: Compiled, bound: Bound, assign: np.ndarray) -> Bound:
    """``bound`` with a better feasible assignment: a smaller gap drops more options."""
    value = c.objective(assign)
    if value >= bound.upper:
        return bound
    keep = _keep(c, bound.reduced, bound.lower, value, assign)
    return replace(bound, upper=value, incumbent=assign, keep=keep)


def heuristic_keep(bound: Bound, units: int) -> np.ndarray:
    """Options of the ~``units`` units whose second-best option is nearest in reduced cost.

    Not a proof: a small integer program over these finds a good incumbent fast.
    """
    second = np.where(bound.keep, bound.reduced, np.inf)
    second[np.arange(len(second)), bound.incumbent] = np.inf
    nearest = second.min(axis=1)
    if np.count_nonzero(np.isfinite(nearest)) <= units:
        return bound.keep
    cut = np.partition(nearest, units)[units]
    keep = bound.keep & (bound.reduced <= cut)
    keep[np.arange(len(keep)), bound.incumbent] = True
    return keep


def _keep(c: Compiled, reduced, lower: float, upper: float, incumbent) -> np.ndarray:
    """Options whose reduced cost is within the gap (all options when there is no incumbent)."""
    if incumbent is None:
        return np.isfinite(c.omega)
    slack = upper - lower + 1e-9 * (abs(upper) + abs(lower)) + 1e-300
    keep = np.isfinite(c.omega) & (reduced <= slack)
    keep[np.arange(c.n_units), incumbent] = True
    return keep


def _raw(c: Compiled, active: np.ndarray, lam: np.ndarray) -> np.ndarray:
    out = np.zeros(len(c.kinds))
    out[active] = lam
    return out


def _polish(lam, separable, an, bn, units, *, rounds: int):
    """Exact line searches, one multiplier at a time: yield the points worth checking.

    Along one coordinate the dual is concave and its slope (the budget's use minus
    its limit) falls as the multiplier grows, so bisection on the slope's sign finds
    the maximum; both ends of the final bracket are yielded (the one at the larger
    multiplier is the budget-feasible side).
    """
    lam = lam.copy()
    for _ in range(rounds):
        for k in range(len(lam)):

            def slope(value: float, k: int = k) -> float:
                trial = lam.copy()
                trial[k] = value
                assign = np.argmin(separable(trial, an), axis=1)
                return float(an[k, units, assign].sum() - bn[k])

            lo, hi = 0.0, max(2.0 * lam[k], 1e-3)
            if slope(lo) <= 0:
                hi = 0.0
            else:
                while slope(hi) > 0 and hi < 1e12:
                    lo, hi = hi, hi * 4
                for _ in range(40):
                    mid = 0.5 * (lo + hi)
                    if slope(mid) > 0:
                        lo = mid
                    else:
                        hi = mid
                    if hi - lo <= 1e-12 * hi:
                        break
            for value in (lo, hi):
                trial = lam.copy()
                trial[k] = value
                yield trial
            lam[k] = hi


def _row_scale(c: Compiled, k: int) -> float:
    top = float(c.costs[k].max(axis=1).sum())
    return top if top > 0 else 1.0


def _feasible_from(lam, wn, an, bn, units) -> np.ndarray | None:
    """Raise the multipliers of violated budgets until the Lagrangian choice fits."""
    if not len(bn):
        return np.argmin(wn, axis=1)
    lam = lam.copy()
    bump = np.ones_like(lam) * max(1.0, float(lam.max(initial=0.0)))
    for _ in range(60):
        assign = np.argmin(wn + _weigh(lam, an), axis=1)
        sub = an[:, units, assign].sum(axis=1) - bn
        if np.all(sub <= 1e-12 * np.maximum(np.abs(bn), 1.0)):
            return assign
        lam = lam + np.where(sub > 0, bump, 0.0)
        bump *= 2
    return None


def improve(c: Compiled, assign: np.ndarray, *, passes: int = 4) -> np.ndarray:
    """Greedy upgrades that lower Ω (pair terms included) while every budget still fits."""
    assign = assign.copy()
    neighbours: list[list[int]] = [[] for _ in range(c.n_units)]
    for p in c.pairs:
        neighbours[p.u].append(p.v)
        neighbours[p.v].append(p.u)
    active = np.flatnonzero(np.isfinite(c.rhs))
    costs = c.costs[active]
    tol = 1e-9 * np.maximum(np.abs(c.rhs[active]), 1.0)
    units = np.arange(c.n_units)
    pu, pv, blocks = c.pair_arrays
    edges = np.arange(len(pu))
    for _ in range(passes):
        delta = c.omega - c.omega[units, assign][:, None]
        if len(pu):
            au, av = assign[pu], assign[pv]
            now = blocks[edges, au, av][:, None]
            np.add.at(delta, pu, blocks[edges, :, av] - now)
            np.add.at(delta, pv, blocks[edges, au, :] - now)
        dcost = costs - costs[:, units, assign][:, :, None]
        slack = c.rhs[active] - costs[:, units, assign].sum(axis=1)
        with np.errstate(over="ignore"):  # no slack left: an upgrade that costs is infinitely dear
            weight = (np.maximum(dcost, 0.0) / np.maximum(slack, 1e-300)[:, None, None]).sum(axis=0)
        with np.errstate(invalid="ignore"):
            better = delta < -1e-15 * (1.0 + np.abs(c.omega))
        # only moves that fit the slack now can fit later (slack only shrinks, bar rare
        # moves that free a budget)
        better &= np.all(dcost <= (slack + tol)[:, None, None], axis=0)
        # one move per unit and pass: its best-ranked upgrade
        rank = np.where(better, delta / (weight + 1e-12), np.inf)
        pick = np.argmin(rank, axis=1)
        cu = np.flatnonzero(np.isfinite(rank[units, pick]))
        if len(cu) == 0:
            break
        cj = pick[cu]
        order = np.argsort(rank[cu, cj])
        steps = dcost[:, cu[order], cj[order]].T.tolist()
        room = (slack + tol).tolist()
        touched = np.zeros(c.n_units, dtype=bool)
        moved = False
        for u, j, step in zip(cu[order].tolist(), cj[order].tolist(), steps):
            if touched[u] or any(d > r for d, r in zip(step, room)):
                continue
            room = [r - d for r, d in zip(room, step)]
            assign[u] = j
            touched[u] = True
            for v in neighbours[u]:
                touched[v] = True
            moved = True
        if not moved:
            break
    return assign


def _chain_ascent(chain: Chain, wn, an, bn, lam, deadline: float, tol: float, rounds: int = 3):
    """Maximise the exact Lagrangian dual of a pair chain, one multiplier at a time.

    Along one coordinate the dual is concave and piecewise linear, and its slope is
    the budget's use minus its limit: a batch of geometric steps brackets the maximum,
    then the tangents at the two ends of the bracket meet above it (an upper bound on
    the dual along that line) and their crossing is the next point to try, until that
    bound is within ``tol`` of the best value. Returns (λ, dual value, the assignments
    met on the way that fit every budget).
    """
    units = np.arange(chain.n)
    found: list[np.ndarray] = []
    slack = 1e-12 * np.maximum(np.abs(bn), 1.0)

    def evaluate(points: np.ndarray):
        m = wn[None] + np.einsum("bk,kuc->buc", points, an)
        values, assign = chain.minimise(m)
        use = np.stack([an[:, units, a].sum(axis=1) for a in assign])  # (B, K)
        slope = use - bn[None]
        for b in np.flatnonzero(np.all(slope <= slack, axis=1)):
            found.append(assign[b])
        return values - points @ bn, slope

    lam = np.asarray(lam, dtype=float).copy()
    (value,), (slope,) = evaluate(lam[None])
    if not len(bn):
        return lam, float(value), found
    for _ in range(rounds):
        start = value
        for k in range(len(bn)):
            if time.perf_counter() > deadline:
                return lam, float(value), found
            if abs(slope[k]) <= slack[k] or (slope[k] < 0 and lam[k] == 0):
                continue
            here = lam[k]
            if slope[k] > 0:
                base = here if here > 0 else float(chain.n)
                steps = here + base * np.array([1e-3, 1e-2, 0.1, 1.0])
            else:
                steps = here * np.array([0.999, 0.99, 0.9, 0.0])
            points = np.repeat(lam[None], len(steps), axis=0)
            points[:, k] = steps
            values, slopes = evaluate(points)
            line = sorted(
                [(here, value, slope)] + [(t, v, s) for t, v, s in zip(steps, values, slopes)],
                key=lambda r: r[0],
            )
            rising = [r for r in line if r[2][k] > 0]
            falling = [r for r in line if r[2][k] <= 0]
            best = max(line, key=lambda r: r[1])
            if rising and falling and rising[-1][0] < falling[0][0]:
                lo, hi = rising[-1], falling[0]
                for _ in range(12):
                    if time.perf_counter() > deadline:
                        break
                    s_lo, s_hi = lo[2][k], hi[2][k]
                    cross = (hi[1] - lo[1] + s_lo * lo[0] - s_hi * hi[0]) / (s_lo - s_hi)
                    cross = min(max(cross, lo[0]), hi[0])
                    ceiling = lo[1] + s_lo * (cross - lo[0])
                    if ceiling - best[1] <= tol or not lo[0] < cross < hi[0]:
                        break
                    point = lam.copy()
                    point[k] = cross
                    (v,), (s,) = evaluate(point[None])
                    r = (cross, v, s)
                    if v > best[1]:
                        best = r
                    if s[k] > 0:
                        lo = r
                    else:
                        hi = r
            lam[k], value, slope = best[0], best[1], best[2]
        if value - start <= tol:
            break
    return lam, float(value), found
