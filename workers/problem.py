"""From a job spec, the discovered layers and a sensitivity table to the solver's
integer program (DESIGN §5): options, costs, budgets and per-layer overrides."""

from __future__ import annotations

import math
from collections.abc import Sequence

from kernels.activation import supports_activation_quant
from kernels.export.formats import export_format
from kernels.scheme import ACTIVATION_BITS as A_BITS
from kernels.scheme import FULL_PRECISION_BITS, Choice, QuantScheme
from sensitivity.bundle import ModelBundle
from sensitivity.layers import LayerInfo
from solver import Budget, Layer, Option, PairTerm, Problem
from workers.accounting import choice_costs, fixed_bytes
from workers.spec import JobSpec


class JobError(Exception):
    """A job that cannot produce a result, with a message for the user."""


def candidate_choices(spec: JobSpec) -> list[Choice]:
    widths = set(spec.weight_bits) | set(spec.overrides.pins.values())
    for bits in spec.overrides.allowed.values():
        widths |= set(bits)
    a_widths = set(spec.activation_bits) | {A_BITS}
    for bits in spec.overrides.activation_bits.values():
        a_widths |= set(bits)
    return [(b, a) for b in sorted(widths | {FULL_PRECISION_BITS}) for a in sorted(a_widths)]


def activation_widths(spec: JobSpec, bundle: ModelBundle,
                      layers: Sequence[LayerInfo]) -> dict[str, list[int]]:
    """The a_bits each layer may take: the job's (or the layer's own override), 16 alone for
    layers left at 16 bits and for inputs that are not quantized (embeddings look up ids);
    tied layers take the widths they all allow (16 if none)."""
    modules = dict(bundle.model.named_modules())
    kept = set(spec.overrides.exclude)
    out = {}
    for layer in layers:
        if layer.name in kept or not supports_activation_quant(modules[layer.name]):
            out[layer.name] = {A_BITS}
        else:
            out[layer.name] = set(spec.overrides.activation_bits.get(layer.name, spec.activation_bits))
    groups: dict[str, set[int]] = {}
    for layer in layers:
        if layer.group is not None:
            groups[layer.group] = groups.get(layer.group, out[layer.name]) & out[layer.name]
    for layer in layers:
        if layer.group is not None:
            out[layer.name] = groups[layer.group] or {A_BITS}
    return {name: sorted(widths) for name, widths in out.items()}


def build_problem(spec: JobSpec, bundle: ModelBundle, layers: Sequence[LayerInfo],
                  omega: dict[str, dict[Choice, float]] | None, scheme: QuantScheme,
                  pairs: dict | None = None) -> Problem:
    """The integer program of the job; `omega=None` gives the feasibility problem."""
    ov = spec.overrides
    a_of = activation_widths(spec, bundle, layers)
    fmt = export_format(spec.export)

    def inputs_for(b: int, a_widths: list[int]) -> list[int]:
        # a format storing input quantization only with quantized weights: 16-bit weights
        # keep 16-bit inputs
        if fmt.inputs_need_weights and b >= FULL_PRECISION_BITS:
            return [A_BITS]
        return a_widths

    solver_layers, allowed, pins = [], {}, {}
    for layer in layers:
        if layer.name in ov.exclude:
            widths = {FULL_PRECISION_BITS}
        else:
            widths = set(ov.allowed.get(layer.name, spec.weight_bits))
            # the widths the grid stores for this shape (the gguf grid: whose type fits the rows)
            widths = widths & set(scheme.widths_for(layer.shape)) or {FULL_PRECISION_BITS}
        if layer.name in ov.pins:
            widths.add(ov.pins[layer.name])
        a_widths = a_of[layer.name]  # joint (w_bits, a_bits) choices
        options = {
            (b, a): Option(omega=omega[layer.name].get((b, a), 0.0) if omega else 0.0,
                           costs=choice_costs(layer, (b, a), scheme, spec.latency_table))
            for b in sorted(widths) for a in inputs_for(b, a_widths)
        }
        solver_layers.append(Layer(layer.name, layer.params, options, layer.group))
        if layer.name in ov.allowed:
            allowed[layer.name] = frozenset((b, a) for b in ov.allowed[layer.name]
                                            for a in inputs_for(b, a_widths))
        if layer.name in ov.pins:  # a pin fixes w_bits; a_bits stays the solver's where several
            pin_inputs = inputs_for(ov.pins[layer.name], a_widths)
            pinned = frozenset((ov.pins[layer.name], a) for a in pin_inputs)
            both = allowed.get(layer.name, pinned) & pinned
            if len(pin_inputs) > 1 and both:
                allowed[layer.name] = both
            else:  # one activation width, or a pin the allowed widths exclude (explained)
                pins[layer.name] = (ov.pins[layer.name], pin_inputs[-1])
    fixed = {"size_bytes": fixed_bytes(bundle.model, layers)}
    if spec.latency_table:
        fixed["latency_ms"] = spec.fixed_latency_ms
    return Problem(
        layers=solver_layers,
        budgets=[Budget(kind, limit) for kind, limit in spec.solver_budgets().items()],
        fixed_costs=fixed,
        pins=pins,
        allowed=allowed,
        pairs=[PairTerm(a, b, values) for (a, b), values in (pairs or {}).items()] if omega else (),
    )


def export_leaves_unquantized(spec: JobSpec, layers: Sequence[LayerInfo]) -> list[str]:
    """Layers the export format cannot quantize (embeddings in compressed-tensors and
    GPTQ, the LM head in GPTQ): `run_job` takes them out of the quantizable layers."""
    fmt = export_format(spec.export)
    return [layer.name for layer in layers
            if (layer.kind == "embedding" and not fmt.quantizes_embeddings)
            or (layer.name.rpartition(".")[2] == "lm_head" and not fmt.quantizes_lm_head)]


def _group_fits(spec: JobSpec, layers: Sequence[LayerInfo], g: int) -> dict[str, bool]:
    """Per quantizable layer (those the format quantizes): whether its inputs hold whole
    groups of `g` and the format's packing multiple."""
    fmt = export_format(spec.export)
    kept = set(export_leaves_unquantized(spec, layers))
    ks = {layer.name: math.prod(layer.shape[1:]) for layer in layers if layer.name not in kept}
    return {n: not ((k > g and k % g) or k % fmt.inputs_multiple) for n, k in ks.items()}


def export_group_size(spec: JobSpec, layers: Sequence[LayerInfo]) -> int:
    """The job's group size, or, where the format needs whole groups and the job's is
    the default (128) that does not divide every layer's inputs, the largest smaller one
    that does (smollm2-135m: 576-wide inputs take groups of 64). Decided on the value,
    not on whether it was given: a spec stored by the service has every field set."""
    g = spec.quant.group_size
    if (not export_format(spec.export).whole_groups or g != QuantScheme.group_size
            or all(_group_fits(spec, layers, g).values())):
        return g
    return next((d for d in (64, 32, 16, 8) if d < g and all(_group_fits(spec, layers, d).values())), g)


def check_export(spec: JobSpec, bundle: ModelBundle, layers: Sequence[LayerInfo]) -> None:
    """Refuse, before any work, a model the job's export format cannot hold."""
    fmt = export_format(spec.export)
    if fmt.grid == "gguf":
        _check_gguf(spec, bundle, layers)
    if fmt.hf_folder and not hasattr(bundle.model, "save_pretrained"):
        raise JobError(f"export {fmt.name!r} writes a Hugging Face model folder; {bundle.name} "
                       "is not a transformers model (use export 'bitalloc')")
    if fmt.layer_kinds is not None:
        other = sorted({layer.kind for layer in layers} - set(fmt.layer_kinds))
        if other:
            names = [layer.name for layer in layers if layer.kind in other]
            raise JobError(f"export {fmt.name!r} quantizes {', '.join(fmt.layer_kinds)} layers; "
                           f"{len(names)} layers are {', '.join(other)} ({', '.join(names[:4])}"
                           f"{', …' if len(names) > 4 else ''}): use export 'bitalloc'")
    if fmt.whole_groups:
        g = spec.quant.group_size
        kept = set(export_leaves_unquantized(spec, layers))
        ks = {layer.name: math.prod(layer.shape[1:]) for layer in layers if layer.name not in kept}
        partial = sorted(n for n, k in ks.items() if (k > g and k % g) or k % fmt.inputs_multiple)
        if partial:
            fits = [d for d in (256, 128, 64, 32, 16, 8)
                    if all(k % d == 0 and k % fmt.inputs_multiple == 0 for k in ks.values())]
            hint = f"; group_size {fits[0]} divides them all" if fits else ""
            packing = f" and inputs in multiples of {fmt.inputs_multiple}" if fmt.inputs_multiple > 1 else ""
            raise JobError(f"export {fmt.name!r} needs whole groups{packing}: {len(partial)} layers "
                           f"have inputs that do not fit group_size {g} ({partial[0]}: "
                           f"{ks[partial[0]]}){hint}")


def check_streamed(spec: JobSpec, bundle: ModelBundle) -> None:
    """Refuse, before any work, what a block-streamed model cannot do yet: it is measured
    and packed with round-to-nearest weights, by the methods whose work goes block by
    block, into bitalloc's own artifact."""
    if bundle.streamed is None:
        return
    from sensitivity.streaming.model import STREAMED_METHODS

    why = f"{bundle.name} is block streamed ({bundle.info.get('streaming')})"
    if spec.method not in STREAMED_METHODS:
        raise JobError(f"{why}: method {spec.method!r} needs the whole model in memory; block "
                       f"streamed it takes {', '.join(STREAMED_METHODS)} (or raise "
                       "BITALLOC_MAX_MEMORY)")
    if spec.method == "hawq_v2" and spec.method_params.get("backend", "bitalloc") != "bitalloc":
        raise JobError(f"{why}: hawq_v2's PyHessian backend needs the whole model in memory")
    if spec.quant.algorithm != "rtn":
        raise JobError(f"{why}: quantizer {spec.quant.algorithm!r} is not streamed into a job "
                       "yet; use quant.algorithm 'rtn' (or raise BITALLOC_MAX_MEMORY)")
    if spec.export != "bitalloc":
        raise JobError(f"{why}: export {spec.export!r} is written from the whole model; block "
                       "streamed, a job writes export 'bitalloc'")
    if spec.quantizes_activations():
        raise JobError(f"{why}: activation quantization calibrates on the whole model; set "
                       "activation widths to 16")


def _check_gguf(spec: JobSpec, bundle: ModelBundle, layers: Sequence[LayerInfo]) -> None:
    """gguf-plan: an architecture llama.cpp's converter names, and pins or allowed widths
    whose GGUF type fits the layer's rows."""
    from kernels.export.gguf_plan import tensor_names

    try:
        tensor_names(bundle.model)
    except ValueError as exc:
        raise JobError(str(exc)) from None
    scheme, ov = spec.quant.scheme(), spec.overrides
    for layer in layers:
        pinned = {ov.pins[layer.name]} if layer.name in ov.pins else set()
        asked = set(ov.allowed.get(layer.name, ())) | pinned
        served = scheme.widths_for(layer.shape)
        if asked - set(served):
            k = math.prod(layer.shape[1:])
            raise JobError(f"export 'gguf-plan': {layer.name} has rows of {k} weights, which GGUF "
                           f"types hold at {list(served)} bits only (k-quants need rows of whole "
                           f"256-blocks); its overrides ask for {sorted(asked - set(served))}")


def check_overrides(spec: JobSpec, layers: Sequence[LayerInfo]) -> None:
    known = {layer.name for layer in layers if layer.used}
    ov = spec.overrides
    named = (set(ov.pins) | set(ov.allowed) | set(ov.exclude) | set(spec.latency_table or {})
             | set(ov.activation_bits))
    unknown = sorted(named - known)
    if unknown:
        raise JobError(f"unknown layers in overrides: {', '.join(unknown)}; "
                       f"quantizable layers: {', '.join(sorted(known))}")
    clash = sorted(set(ov.pins) & set(ov.exclude))
    if clash:
        raise JobError(f"layers both pinned and excluded: {', '.join(clash)}")
    lookups = sorted(n for n, bits in ov.activation_bits.items() if min(bits) < 16
                     and any(layer.name == n and layer.kind == "embedding" for layer in layers))
    if lookups:
        raise JobError(f"an embedding's input is token ids, not activations to quantize: "
                       f"{', '.join(lookups)} take activation bits 16 only")
