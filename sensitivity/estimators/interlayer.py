"""`interlayer` ("Augmenting Hessians with Inter-Layer Dependencies"): the per-layer
Ω of `hawq_v2` plus pairwise terms for layers within `window` of each other (in
layer order):

- `pairs="hessian"`: P_ij(b_i, b_j) = ΔW_i(b_i)ᵀ H_ij ΔW_j(b_j), exact, from one
  Hessian-vector product with ΔW_j(b_j) per layer j and quantized choice (the
  second-order loss change of quantizing both is Ω_i + Ω_j + P_ij);
- `pairs="measured"`: G_ij = L(i, j) − L(i) − L(j) + L(∅) on calibration data, and
  then the per-layer terms are measured too, Ω_l(b) = L(l) − L(∅) (as `empirical`),
  so that Ω_i + Ω_j + G_ij = L(i, j) − L(∅) exactly. Measured interactions beside
  second-order Ω are in different units: at low widths the measured loss saturates,
  G_ij is large and negative while the second-order Ω stay small, and the solver
  drove pairs of layers to 2 bits for a negative objective (digits-cnn at 3 bits:
  85 % accuracy against 98.9 % with measured Ω).

Pairs go to `table.pairs[(a, b)] = {(choice_a, choice_b): value}` with a before b
(every choice pair; a 16-bit choice is its fp16 storage rounding, tiny).
Params (`sensitivity.methods.InterlayerConfig`): window (default 2), pairs (default
"hessian"), and with Hessian pairs every `hawq_v2` parameter (measured pairs take
none: nothing is estimated).
"""

from __future__ import annotations

import time

import torch

from sensitivity.estimators.context import EstimatorContext
from sensitivity.estimators.traces import hessian_traces, trace_table
from sensitivity.hvp import LossGraph
from sensitivity.measure import calibration_loss, loss_with
from sensitivity.methods import InterlayerConfig
from sensitivity.perturb import Perturbation, frozen
from sensitivity.table import Choice, SensitivityTable

Pairs = dict[tuple[str, str], dict[tuple[Choice, Choice], float]]


def neighbour_pairs(n: int, window: int) -> list[tuple[int, int]]:
    return [(i, j) for j in range(n) for i in range(max(0, j - window), j)]


def estimate(ctx: EstimatorContext, config: InterlayerConfig) -> SensitivityTable:
    start = time.perf_counter()
    if config.pairs == "measured":
        omega, pairs, base, count = measured_terms(ctx, config.window)
        seconds = time.perf_counter() - start
        return SensitivityTable(
            method="interlayer", omega=omega, layer_stats={}, pairs=pairs,
            meta={"params": config.meta_params(), "fp_loss": base,
                  "pair_forward_passes": count, "pair_seconds": seconds, "seconds": seconds})
    saved = ctx.checkpoint.load("interlayer")
    if saved:  # the per-layer terms were done; params restated (older checkpoints lack window, pairs)
        table = SensitivityTable.from_json(saved["table"])
        table.meta["params"] = config.meta_params()
    else:
        table = trace_table(ctx, "interlayer", hessian_traces(ctx, config.hessian), config.meta_params())
        ctx.checkpoint.save("interlayer", {"table": table.to_json()}, force=True)
    pairs_t0 = time.perf_counter()
    table.pairs, table.meta["pair_hvps"] = hessian_pairs(ctx, config.window)
    table.meta["pair_seconds"] = time.perf_counter() - pairs_t0
    table.meta["seconds"] = time.perf_counter() - start
    return table


def hessian_pairs(ctx: EstimatorContext, window: int) -> tuple[Pairs, int]:
    """P_ij(c_i, c_j) for every pair within `window`, and the HVPs taken.

    Memory is bounded by the window, not the model: ΔW_l(c) is made for the layers
    j − window … j of the current j only (each layer's once, held while it is j or one
    of j's targets, then dropped), and not kept by the quantized-weights provider.
    With several calibration batches each (j, batch) graph is built for j and its
    targets only (the other layers unperturbed, so the backward pass stops below the
    lowest of them and takes no other layer's gradient); the one graph of a single
    batch is kept for every j and covers every layer."""
    names, choices = ctx.names, ctx.choices
    pert = Perturbation(ctx.bundle, names)
    qw = ctx.weights
    quantized = list(choices)
    near: dict[int, dict[Choice, torch.Tensor]] = {}  # layer -> ΔW_l(c) in δ space, l in j - window … j

    def deltas_of(i: int) -> dict[Choice, torch.Tensor]:
        if i not in near:
            near[i] = {c: pert.restrict(i, qw.delta(names[i], c, keep=False)) for c in quantized}
        return near[i]

    pairs = {(names[i], names[j]): {(ca, cb): 0.0 for ca in choices for cb in choices}
             for i, j in neighbour_pairs(len(names), window)}
    hvps = 0
    graph = None
    with frozen(ctx.bundle.model):
        for j in range(1, len(names)):
            targets = list(range(max(0, j - window), j))
            for i in [i for i in near if i < targets[0]]:
                del near[i]
            dj = deltas_of(j)
            di = {i: deltas_of(i) for i in targets}
            for wb in ctx.batches:
                if not ctx.single_batch:
                    graph = None  # the last one freed before the next is built
                    graph = LossGraph(pert, wb.batch, only=[*targets, j])
                elif graph is None:
                    graph = LossGraph(pert, wb.batch)
                for cj in quantized:
                    vs = [None] * len(names)
                    vs[j] = dj[cj]
                    for i, h in zip(targets, graph.hvp(vs, targets)):
                        h = h.double()
                        for ci in quantized:
                            val = float((di[i][ci].double() * h).sum())
                            pairs[(names[i], names[j])][(ci, cj)] += wb.share * val
                    hvps += 1
            ctx.progress(j / (len(names) - 1), f"pair terms of {names[j]}: {hvps} HVPs")
    return pairs, hvps


@torch.no_grad()
def measured_terms(ctx: EstimatorContext, window: int):
    """(Ω, pairs, full-precision loss, forward passes), all measured."""
    bundle, names = ctx.bundle, ctx.names
    qw = ctx.weights
    quantized = list(ctx.choices)
    base = calibration_loss(bundle)
    single = {(n, c): loss_with(bundle, qw, [(n, c)]) for n in names for c in quantized}
    forwards = 1 + len(single)
    pairs: Pairs = {}
    todo = neighbour_pairs(len(names), window)
    for k, (i, j) in enumerate(todo):
        a, b = names[i], names[j]
        vals = {(ca, cb): 0.0 for ca in ctx.choices for cb in ctx.choices}
        for ca in quantized:
            for cb in quantized:
                both = loss_with(bundle, qw, [(a, ca), (b, cb)])
                vals[(ca, cb)] = both - single[(a, ca)] - single[(b, cb)] + base
                forwards += 1
        pairs[(a, b)] = vals
        ctx.progress((k + 1) / len(todo), f"measured pair {a} × {b}")
    omega = {n: {c: single[(n, c)] - base for c in quantized} for n in names}
    return omega, pairs, base, forwards * len(bundle.calibration)
