"""Exact minimisation of unary plus pair costs when every pair is near in unit order.

When each pair block joins units ``u < v`` with ``v - u <= 2`` (the window-2 pair
terms of a layer chain), the pair graph has bandwidth 2 and

    min_x Σ_u m[u, x_u] + Σ_(u,v) P_uv[x_u, x_v]

is a dynamic program over the choices of the last two units (C² states, C³ work
per unit). It is exact, so with m = Ω + λ·cost it gives the Lagrangian dual of the
budgets with nothing lost to the pair terms, and its min-marginals (the best cost
with one unit's choice fixed) are the strongest reduced costs for eliminating
options. Every routine takes a batch of unary tables (B, U, C) at once: the Python
loop over units is what costs, so several multipliers are evaluated for about the
price of one.
"""

from __future__ import annotations

import numpy as np

from solver.compiled import Compiled

BANDWIDTH = 2
BIG = 1e30  # stands for +inf (an invalid option) without inf - inf in the passes


def bandwidth(c: Compiled) -> int:
    return max((p.v - p.u for p in c.pairs), default=0)


class Chain:
    """The pair blocks of ``c`` laid out for the dynamic program (needs bandwidth <= 2)."""

    def __init__(self, c: Compiled, scale: float = 1.0):
        if bandwidth(c) > BANDWIDTH:
            raise ValueError(f"pair terms span more than {BANDWIDTH} units in order")
        n, width = c.omega.shape
        self.n, self.width = n, width
        self.valid = np.isfinite(c.omega)
        # p1[v]: block (v - 1, v); p2[v]: block (v - 2, v); rows index the earlier unit
        self.p1 = np.zeros((n, width, width))
        self.p2 = np.zeros((n, width, width))
        for p in c.pairs:
            (self.p1 if p.v - p.u == 1 else self.p2)[p.v] += p.values / scale

    def _unary(self, m: np.ndarray) -> np.ndarray:
        return np.where(self.valid[None], np.minimum(m, BIG), BIG)

    def minimise(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best value and assignment for each unary table in the batch ``m`` (B, U, C)."""
        m = self._unary(m)
        b = m.shape[0]
        rows = np.arange(b)
        if self.n == 1:
            assign = np.argmin(m[:, 0], axis=1)[:, None]
            return m[rows, 0, assign[:, 0]], assign
        forward = self._forward(m)
        last = forward[-1].reshape(b, -1)
        flat = np.argmin(last, axis=1)
        value = last[rows, flat]
        assign = np.empty((b, self.n), dtype=int)
        assign[:, -2], assign[:, -1] = np.divmod(flat, self.width)
        for v in range(self.n - 1, 1, -1):
            # a[v-2] = argmin_a F[v-1][a, a[v-1]] + p2[v][a, a[v]]
            f = forward[v - 1][rows, :, assign[:, v - 1]]  # (B, C)
            assign[:, v - 2] = np.argmin(f + self.p2[v][:, assign[:, v]].T, axis=1)
        return value, assign

    def _forward(self, m: np.ndarray) -> list[np.ndarray]:
        """F[v][b, a_(v-1), a_v]: best cost of units 0..v with the last two fixed (F[0] unused)."""
        f = m[:, 0, :, None] + self.p1[1][None] + m[:, 1, None, :]
        out = [f, f]
        p1, p2 = self.p1, self.p2
        for v in range(2, self.n):
            f = (f[:, :, :, None] + p2[v][None, :, None, :]).min(axis=1) + (p1[v][None] + m[:, v, None, :])
            out.append(f)
        return out

    def min_marginals(self, m: np.ndarray) -> np.ndarray:
        """(U, C): the best total cost with unit u at choice i, for one unary table (U, C)."""
        m = self._unary(m[None])
        if self.n == 1:
            return m[0]
        forward = self._forward(m)
        p1, p2 = self.p1, self.p2
        out = np.empty((self.n, self.width))
        # G[v][a_(v-1), a_v]: best cost of what units after v add, given the last two
        g = np.zeros((self.width, self.width))
        both = forward[-1][0] + g
        out[-1] = both.min(axis=0)
        out[-2] = both.min(axis=1)
        for v in range(self.n - 2, 0, -1):
            step = p1[v + 1] + m[0, v + 1][None, :] + g  # (a_v, a_(v+1))
            g = (p2[v + 1][:, None, :] + step[None, :, :]).min(axis=2)  # (a_(v-1), a_v)
            both = forward[v][0] + g
            out[v] = both.min(axis=0)
            if v == 1:
                out[0] = both.min(axis=1)
        return np.where(self.valid, np.minimum(out, BIG), np.inf)
