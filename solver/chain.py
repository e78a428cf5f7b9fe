"""Exact minimisation of unary plus pair costs when every pair is near in unit order.

When each pair block joins units ``u < v`` with ``v - u <= w`` (the window-w pair
terms of a layer chain), the pair graph has bandwidth w and

    min_x Σ_u m[u, x_u] + Σ_(u,v) P_uv[x_u, x_v]

is a dynamic program over the choices of the last w units (C^w states, C^(w+1) work
per unit; w = 2 and 7 choices: 49 states). It is exact, so with m = Ω + λ·cost it
gives the Lagrangian dual of the budgets with nothing lost to the pair terms, and its
min-marginals (the best cost with one unit's choice fixed) are the strongest reduced
costs for eliminating options. ``minimise`` takes a batch of unary tables (B, U, C):
the Python loop over units is what costs, so several multipliers are evaluated for
about the price of one.

The recursion starts from w dummy units before unit 0, each with one choice (index 0)
and no cost, so every step has the same shape.
"""

from __future__ import annotations

import numpy as np

from solver.compiled import Compiled

MAX_STATES = 343  # C^w: window 3 with 7 choices, window 2 with up to 18
BIG = 1e30  # stands for +inf (an invalid option) without inf - inf in the passes


def bandwidth(c: Compiled) -> int:
    return max((p.v - p.u for p in c.pairs), default=0)


def fits(c: Compiled) -> bool:
    """Whether the pair terms of ``c`` are a chain this module solves in reasonable time."""
    return c.omega.shape[1] ** max(bandwidth(c), 1) <= MAX_STATES


class Chain:
    """The pair blocks of ``c`` laid out for the dynamic program."""

    def __init__(self, c: Compiled, scale: float = 1.0):
        if not fits(c):
            raise ValueError(
                f"pair terms span {bandwidth(c)} units in order: {c.omega.shape[1]}^{bandwidth(c)} "
                f"states is over {MAX_STATES}"
            )
        n, width = c.omega.shape
        w = max(bandwidth(c), 1)
        self.n, self.width, self.w = n, width, w
        self.valid = np.isfinite(c.omega)
        # blocks[d, v]: block (v - d, v), rows index the earlier unit (zero when absent)
        blocks = np.zeros((w + 1, n, width, width))
        for p in c.pairs:
            blocks[p.v - p.u, p.v] += p.values / scale
        self.far = blocks[w]  # (n, C, C): the pair that leaves the state at each step
        # far as a (w + 1)-axis tensor over (a_(v-w), ..., a_v)
        self.far_b = self.far.reshape((n, width) + (1,) * (w - 1) + (width,))
        # near[v] over the state (a_(v-w+1), ..., a_v): the pairs (v - d, v) with d < w
        near = np.zeros((n,) + (width,) * w)
        for d in range(1, w):
            shape = [n] + [1] * w
            shape[w - d] = width
            shape[w] = width
            near = near + blocks[d].reshape(shape)
        self.near = near

    def _unary(self, m: np.ndarray) -> np.ndarray:
        return np.where(self.valid[None], np.minimum(m, BIG), BIG)

    def _start(self, b: int) -> np.ndarray:
        state = np.full((b,) + (self.width,) * self.w, BIG)
        state[(slice(None),) + (0,) * self.w] = 0.0
        return state

    def _forward(self, m: np.ndarray) -> list[np.ndarray]:
        """F[v][b, a_(v-w+1), ..., a_v]: best cost of units 0..v with the last w fixed."""
        b, w = m.shape[0], self.w
        unary = m.reshape((b, self.n) + (1,) * (w - 1) + (self.width,))
        state = self._start(b)
        out = []
        for v in range(self.n):
            state = (state[..., None] + self.far_b[v]).min(axis=1) + self.near[v] + unary[:, v]
            out.append(state)
        return out

    def minimise(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best value and assignment for each unary table in the batch ``m`` (B, U, C)."""
        m = self._unary(m)
        b = m.shape[0]
        rows = np.arange(b)
        forward = self._forward(m)
        last = forward[-1].reshape(b, -1)
        flat = np.argmin(last, axis=1)
        value = last[rows, flat]
        return value, (self._back_rows if b <= 2 else self._back_batch)(forward, flat)

    def _back_rows(self, forward: list[np.ndarray], flat: np.ndarray) -> np.ndarray:
        """The assignments behind the best final states, one batch row at a time: Python
        ints and basic indexing, a few microseconds a step (the faster for 1 or 2 rows)."""
        w, n = self.w, self.n
        assign = np.empty((len(flat), n), dtype=int)
        for row in range(len(flat)):
            # full[w + u] is unit u; full[:w] the dummy units before unit 0
            full = [0] * (n + w)
            full[n:] = [int(i) for i in np.unravel_index(flat[row], (self.width,) * w)]
            for v in range(n - 1, w - 1, -1):
                # unit v - w: argmin_a F[v-1][a, a_(v-w+1), ..., a_(v-1)] + far[v][a, a_v]
                before = forward[v - 1][(row, slice(None), *full[v + 1 : v + w])]
                full[v] = int(np.argmin(before + self.far[v][:, full[v + w]]))
            assign[row] = full[w:]
        return assign

    def _back_batch(self, forward: list[np.ndarray], flat: np.ndarray) -> np.ndarray:
        """The same as ``_back_rows`` for the whole batch at once (fancy indexing)."""
        w, n, b = self.w, self.n, len(flat)
        rows = np.arange(b)
        full = np.zeros((b, n + w), dtype=int)
        full[:, n:] = np.stack(np.unravel_index(flat, (self.width,) * w), axis=1)
        for v in range(n - 1, w - 1, -1):
            index = (rows, slice(None)) + tuple(full[:, v + 1 + j] for j in range(w - 1))
            before = forward[v - 1][index]  # (B, C)
            full[:, v] = np.argmin(before + self.far[v][:, full[:, w + v]].T, axis=1)
        return full[:, w:]

    def min_marginals(self, m: np.ndarray) -> np.ndarray:
        """(U, C): the best total cost with unit u at choice i, for one unary table (U, C)."""
        m = self._unary(m[None])
        w, n = self.w, self.n
        forward = self._forward(m)
        unary = m[0].reshape((n,) + (1,) * (w - 1) + (self.width,))
        out = np.empty((n, self.width))
        # G over (a_(v-w+1), ..., a_v): best cost that the units after v add
        after = np.zeros((self.width,) * w)
        axes = tuple(range(w - 1))
        for v in range(n - 1, -1, -1):
            both = forward[v][0] + after
            out[v] = both.min(axis=axes) if axes else both
            if v:
                step = self.near[v] + unary[v] + after  # over (a_(v-w+1), ..., a_v)
                after = (step[None] + self.far_b[v]).min(axis=w)
        return np.where(self.valid, np.minimum(out, BIG), np.inf)
