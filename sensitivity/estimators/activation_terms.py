"""The activation term of Ω (issue #17), shared by hawq_v2, fisher and empirical; not an
estimator itself. For a choice (w, a) of layer l the table holds

    Ω_l(w, a) = Ω^W_l(w) + Ω^A_l(a)                  (additive; Ω^A_l(16) = 0)

with Ω^W the method's weight term and, for the second-order methods,

    Ω^A_l(a) = ½ · (Tr(H_a,l) / n_a,l) · E‖Δa_l(a)‖²

mirroring HAWQ-V2's weight formula (DESIGN §4): H_a,l is the Hessian of the calibration
loss w.r.t. layer l's input activations, Tr(H_a,l) = Σ_b share_b · Tr(∂²L_b/∂a_{l,b}²) by
Hutchinson (Rademacher probes on a perturbation δ added to the input by a forward pre-hook,
the same loop and stopping rule as the weight traces); n_a,l is the input's size per
calibration sample and E‖Δa_l(a)‖² the squared error of the calibrated activation quantizer
per calibration sample (`sensitivity.activations`). Per batch this is
½ · Tr(H_b)/numel(a_b) · ‖Δa_b‖², the batch-size factors cancel.

* hawq_v2: Tr(H_a) by input-space Hessian-vector products (double backward); for a
  zero-residual bundle with engine `auto` by Gauss–Newton probes (H = G exactly there).
* fisher: Tr(G_a), G_a = J_aᵀ H_out J_a, from one backward per output-space probe u
  (‖J_aᵀ u‖²; a sample's input affects only its own output, so this is per sample).
* empirical: Ω^A_l(a) = L(only layer l's input quantized at a) − L(full precision).

Layers whose input is not quantized (embeddings: token ids) have only a = 16 choices.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from functools import partial

import torch

from kernels.activation import quantized_inputs
from kernels.scheme import ACTIVATION_BITS
from sensitivity.bundle import Batch, ModelBundle
from sensitivity.estimators.context import EstimatorContext
from sensitivity.estimators.hutchinson import ProbeEngine, hutchinson_traces
from sensitivity.hvp import rademacher
from sensitivity.measure import calibration_loss
from sensitivity.methods import MethodConfig
from sensitivity.table import Choice, SensitivityTable

STATE = "activation_traces"  # checkpoint kind


class InputPerturbation:
    """δ_l added to the input of each named layer by a forward pre-hook (created in the
    forward, shaped like that batch's input), so derivatives are w.r.t. the inputs at δ = 0."""

    def __init__(self, bundle: ModelBundle, names: Sequence[str]):
        self.bundle = bundle
        self.names = list(names)
        modules = dict(bundle.model.named_modules())
        self.modules = [modules[n] for n in self.names]

    def run(self, fn, active: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """fn(model) with δ on the inputs of the `active` layers; returns (result, δs)."""
        deltas: list[torch.Tensor | None] = [None] * len(self.names)

        def hook(i, module, args, kwargs):
            if deltas[i] is not None:
                raise ValueError(f"layer {self.names[i]} runs more than once per forward: "
                                 "activation sensitivity supports layers called once")
            x = args[0] if args else next(iter(kwargs.values()))
            d = torch.zeros_like(x).requires_grad_(True)
            deltas[i] = d
            if args:
                return (x + d, *args[1:]), kwargs
            key = next(iter(kwargs))
            return args, {**kwargs, key: x + d}

        handles = [self.modules[i].register_forward_pre_hook(partial(hook, i), with_kwargs=True)
                   for i in active]
        try:
            result = fn(self.bundle.model)
        finally:
            for h in handles:
                h.remove()
        missing = [self.names[i] for i in active if deltas[i] is None]
        if missing:
            raise ValueError(f"layers not run by the model's forward: {', '.join(missing)}")
        return result, deltas


class _InputLossGraph:
    """The loss of one batch and its gradient w.r.t. every active input δ (create_graph)."""

    def __init__(self, pert: InputPerturbation, batch: Batch, active: Sequence[int]):
        self.loss, self.deltas = pert.run(lambda m: pert.bundle.loss(m, batch), active)
        live = list(active)
        grads = torch.autograd.grad(self.loss, [self.deltas[i] for i in live], create_graph=True,
                                    allow_unused=True)
        self.grads = dict(zip(live, grads))

    def block_hvp(self, i: int, v: torch.Tensor) -> torch.Tensor:
        g = self.grads[i]
        if g is None or not g.requires_grad:
            return torch.zeros_like(v)
        (hv,) = torch.autograd.grad(g, self.deltas[i], grad_outputs=v, retain_graph=True,
                                    is_grads_batched=True, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv


class _InputOutputGraph:
    def __init__(self, pert: InputPerturbation, batch: Batch, active: Sequence[int]):
        self.output, self.deltas = pert.run(lambda m: pert.bundle.forward(m, batch), active)


def _rowdots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double().flatten(1) * b.double().flatten(1)).sum(1)


class InputHessianEngine(ProbeEngine):
    """vᵀ H_a v with Rademacher v on the layer's input, by double backward."""

    name, default_block = "input_hvp", 4

    def add_samples(self, b, wb, k, gen, active, sample):
        graph = self._graph(b, lambda: _InputLossGraph(self.pert, wb.batch, active))
        for i in active:
            v = rademacher((k, *graph.deltas[i].shape), gen, graph.deltas[i].dtype)
            sample[i] += wb.share * _rowdots(v, graph.block_hvp(i, v))
        return k * len(active)


class InputGaussNewtonEngine(ProbeEngine):
    """‖J_aᵀ u‖² for output-space probes u with E[u uᵀ] = H_out: one backward per probe for
    every layer's input at once; unbiased for Tr(G_a), never negative."""

    name, default_block = "input_gn", 8

    def add_samples(self, b, wb, k, gen, active, sample):
        og = self._graph(b, lambda: _InputOutputGraph(self.pert, wb.batch, active))
        u = self.pert.bundle.output_loss.probes(og.output.detach(), wb.batch, k, gen)
        grads = torch.autograd.grad(og.output, [og.deltas[i] for i in active], grad_outputs=u,
                                    is_grads_batched=True, retain_graph=True, allow_unused=True)
        for i, g in zip(active, grads):
            if g is not None:
                sample[i] += wb.share * g.double().pow(2).flatten(1).sum(1)
        return k


def input_quantized_loss(bundle: ModelBundle, acts, name: str, bits: int) -> float:
    """The calibration loss with only layer `name`'s input quantized at `bits`."""
    with quantized_inputs(bundle.model, {name: acts.quantizer(name, bits)}):
        return calibration_loss(bundle)


def input_engine(bundle: ModelBundle, method: str, config: MethodConfig) -> type[ProbeEngine]:
    if method == "fisher":
        bundle.require_output_loss("fisher")
        return InputGaussNewtonEngine
    # hawq_v2: the Hessian; Gauss–Newton probes where it is the Hessian (zero residual)
    if bundle.zero_residual and config.engine in ("auto", "gn", "gn_joint", "jvp"):
        return InputGaussNewtonEngine
    return InputHessianEngine


def activation_traces(ctx: EstimatorContext, method: str, config: MethodConfig):
    """Tr(H_a,l) (or Tr(G_a,l)) of every layer in `ctx` by Hutchinson."""
    engine = input_engine(ctx.bundle, method, config)
    return hutchinson_traces(ctx, engine, config.probes, pert=InputPerturbation(ctx.bundle, ctx.names),
                             state=STATE)


def add_activation_terms(ctx: EstimatorContext, table: SensitivityTable, method: str,
                         config: MethodConfig, choices: Sequence[Choice]) -> SensitivityTable:
    """The joint table over `choices` ((w, a) pairs) from the weight table (a = 16) plus
    each layer's Ω^A(a); `ctx` is the weight table's context (its checkpoint is reused
    under its own kind once the weight part is done)."""
    start = time.perf_counter()
    acts = ctx.weights.activations
    a_bits = sorted({c[1] for c in choices} | {ACTIVATION_BITS})
    quantized = sorted({b for b in a_bits if b < ACTIVATION_BITS})
    names = [n for n in ctx.names if acts.supports(n)]
    sub = dataclasses.replace(ctx, layers=[layer for layer in ctx.layers if layer.name in set(names)])
    errors = acts.errors(names, a_bits)
    omega_a: dict[str, dict[int, float]] = {}
    stats: dict[str, dict[str, float]] = {}
    meta: dict = {"settings": acts.scheme.as_dict(), "combine": "additive",
                  "formula": "½·(Tr(H_a)/n_a)·E‖Δa‖²" if method != "empirical"
                  else "L(only the input at a) − L(full precision)"}
    if method == "empirical":
        base = calibration_loss(ctx.bundle)
        for k, name in enumerate(names):
            omega_a[name] = {a: (input_quantized_loss(ctx.bundle, acts, name, a) - base)
                             if a < ACTIVATION_BITS else 0.0
                             for a in a_bits}
            ctx.progress((k + 1) / max(len(names), 1), f"{name}: input quantization measured")
        meta["forward_passes"] = len(names) * len(quantized) * len(ctx.bundle.calibration)
    elif names:
        result = activation_traces(sub, method, config)
        for name in names:
            s = result.stats[name]
            n_a = acts.numel(name)
            per_element = max(s.mean, 0.0) / n_a
            omega_a[name] = {a: 0.5 * per_element * errors[name][a] for a in a_bits}
            stats[name] = {"act_trace": s.mean, "act_trace_se": s.stderr, "act_rel_error": s.rel_error,
                           "act_probes": s.n, "act_numel": n_a}
        meta.update(engine=result.engine, evaluations=result.hvps, trace_seconds=result.seconds,
                    max_rel_error=max((s.rel_error for s in result.stats.values()), default=0.0))
    for name in names:
        for a in quantized:
            stats.setdefault(name, {})[f"act_err_a{a}"] = errors[name][a]
    omega: dict[str, dict[Choice, float]] = {}
    for name in ctx.names:
        row = table.omega[name]
        omega[name] = {}
        for w, a in choices:
            if a < ACTIVATION_BITS and name not in omega_a:
                continue  # its input is not quantized: only a = 16
            omega[name][(w, a)] = row[(w, ACTIVATION_BITS)] + omega_a.get(name, {}).get(a, 0.0)
    layer_stats = {n: {**table.layer_stats.get(n, {}), **stats.get(n, {})} for n in ctx.names}
    meta["seconds"] = time.perf_counter() - start
    meta["ranges"] = acts.meta()["ranges"]
    return dataclasses.replace(table, omega=omega, layer_stats=layer_stats,
                               meta={**table.meta, "activation": meta})
