"""Seeded random small problems that exercise every budget kind and override."""

from __future__ import annotations

import random

from solver.problem import BUDGET_KINDS, Budget, Layer, Option, PairTerm, Problem

W_BITS = (2, 3, 4, 5, 6, 8, 16)


def bpw(bits: int) -> float:
    return bits + (16 + bits) / 128 if bits < 16 else 16.0


def random_problem(seed: int, *, pairs: bool = True, max_layers: int = 6) -> Problem:
    rng = random.Random(seed)
    n = rng.randint(2, max_layers)
    width = 3 if n > 5 else rng.randint(2, 4)
    layers = []
    for i in range(n):
        params = rng.randint(100, 10_000)
        macs = params * rng.randint(1, 20)
        trace = rng.lognormvariate(0, 1)
        latency_base = rng.uniform(0.01, 0.2)
        choices = sorted(rng.sample(W_BITS, width))
        options = {}
        for w in choices:
            a = 8 if rng.random() < 0.2 else 16
            options[(w, a)] = Option(
                trace * params * 2.0 ** (-2 * w) * rng.uniform(0.7, 1.3),
                {
                    "avg_bits": params * bpw(w),
                    "size_bytes": params * bpw(w) / 8,
                    "bops": float(macs * w * a),
                    "latency_ms": latency_base * (0.5 + w / 16) * rng.uniform(0.8, 1.2),
                },
            )
        layers.append(Layer(f"l{i}", params, options))
    # ties: give a pair of layers with a common choice set the same group
    if n >= 3 and rng.random() < 0.5:
        a, b = rng.sample(range(n), 2)
        common = set(layers[a].options) & set(layers[b].options)
        if common:
            layers[a] = Layer(layers[a].name, layers[a].params, layers[a].options, group="g")
            layers[b] = Layer(layers[b].name, layers[b].params, layers[b].options, group="g")
    pins, allowed = {}, {}
    if rng.random() < 0.4:
        layer = rng.choice(layers)
        pins[layer.name] = rng.choice(sorted(layer.options))
    if rng.random() < 0.4:
        layer = rng.choice(layers)
        allowed[layer.name] = frozenset(rng.sample(sorted(layer.options), max(1, len(layer.options) - 1)))
    terms = []
    if pairs and rng.random() < 0.6:
        for _ in range(rng.randint(1, n)):
            a, b = rng.sample(layers, 2)
            values = {
                (ca, cb): rng.uniform(-0.3, 0.3) * (a.options[ca].omega * b.options[cb].omega) ** 0.5
                for ca in a.options
                for cb in b.options
                if rng.random() < 0.8
            }
            terms.append(PairTerm(a.name, b.name, values))
    fixed = {"size_bytes": rng.uniform(0, 5000), "latency_ms": rng.uniform(0, 0.5)}
    total_params = sum(x.params for x in layers)
    budgets = []
    for kind in rng.sample(BUDGET_KINDS, rng.randint(1, 3)):
        low = sum(min(o.costs[kind] for o in x.options.values()) for x in layers)
        high = sum(max(o.costs[kind] for o in x.options.values()) for x in layers)
        limit = low + rng.uniform(0.1, 0.9) * (high - low)
        if kind == "avg_bits":
            limit /= total_params
        else:
            limit += fixed.get(kind, 0.0)
        budgets.append(Budget(kind, limit))
    return Problem(layers, budgets, fixed, pins, allowed, terms)


def contested_problem() -> Problem:
    """Eight near-equal layers and one size budget: the bound leaves a core for the MIP."""
    layers = [
        Layer(
            f"l{i}",
            1000 + 37 * i,
            {
                (b, 16): Option(
                    (1000 + 37 * i) * (1 + 0.01 * i) * 2.0 ** (-2 * b),
                    {"size_bytes": (1000 + 37 * i) * bpw(b) / 8},
                )
                for b in (2, 4, 8)
            },
        )
        for i in range(8)
    ]
    return Problem(layers, [Budget("size_bytes", 0.55 * sum(x.params for x in layers))])
