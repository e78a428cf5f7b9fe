"""From a job spec, the discovered layers and a sensitivity table to the solver's
integer program (DESIGN §5): options, costs, budgets and per-layer overrides."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    return [(b, A_BITS) for b in sorted(widths | {FULL_PRECISION_BITS})]


def build_problem(spec: JobSpec, bundle: ModelBundle, layers: Sequence[LayerInfo],
                  omega: dict[str, dict[Choice, float]] | None, scheme: QuantScheme,
                  pairs: dict | None = None) -> Problem:
    """The integer program of the job; `omega=None` gives the feasibility problem."""
    ov = spec.overrides
    kept = set(export_keeps_16_bit(spec, layers))
    solver_layers, allowed = [], {}
    for layer in layers:
        if layer.name in ov.exclude or layer.name in kept:
            widths = {FULL_PRECISION_BITS}
        else:
            widths = set(ov.allowed.get(layer.name, spec.weight_bits))
            # the widths the grid stores for this shape (the gguf grid: whose type fits the rows)
            widths = widths & set(scheme.widths_for(layer.shape)) or {FULL_PRECISION_BITS}
        if layer.name in ov.pins:
            widths.add(ov.pins[layer.name])
        options = {
            (b, A_BITS): Option(omega=omega[layer.name].get((b, A_BITS), 0.0) if omega else 0.0,
                                costs=choice_costs(layer, (b, A_BITS), scheme, spec.latency_table))
            for b in sorted(widths)
        }
        solver_layers.append(Layer(layer.name, layer.params, options, layer.group))
        if layer.name in ov.allowed:
            allowed[layer.name] = frozenset((b, A_BITS) for b in ov.allowed[layer.name])
    fixed = {"size_bytes": fixed_bytes(bundle.model, layers)}
    if spec.latency_table:
        fixed["latency_ms"] = spec.fixed_latency_ms
    return Problem(
        layers=solver_layers,
        budgets=[Budget(kind, limit) for kind, limit in spec.solver_budgets().items()],
        fixed_costs=fixed,
        pins={name: (bits, A_BITS) for name, bits in ov.pins.items()},
        allowed=allowed,
        pairs=[PairTerm(a, b, values) for (a, b), values in (pairs or {}).items()] if omega else (),
    )


def export_keeps_16_bit(spec: JobSpec, layers: Sequence[LayerInfo]) -> list[str]:
    """Layers the export format leaves unquantized (embeddings in compressed-tensors and
    GPTQ, the LM head in GPTQ)."""
    fmt = export_format(spec.export)
    return [layer.name for layer in layers
            if (layer.kind == "embedding" and not fmt.quantizes_embeddings)
            or (layer.name.rpartition(".")[2] == "lm_head" and not fmt.quantizes_lm_head)]


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
        kept = set(export_keeps_16_bit(spec, layers))
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
        asked = set(ov.allowed.get(layer.name, ())) | ({ov.pins[layer.name]} if layer.name in ov.pins else set())
        served = scheme.widths_for(layer.shape)
        if asked - set(served):
            k = math.prod(layer.shape[1:])
            raise JobError(f"export 'gguf-plan': {layer.name} has rows of {k} weights, which GGUF "
                           f"types hold at {list(served)} bits only (k-quants need rows of whole "
                           f"256-blocks); its overrides ask for {sorted(asked - set(served))}")


def check_overrides(spec: JobSpec, layers: Sequence[LayerInfo]) -> None:
    known = {layer.name for layer in layers if layer.used}
    ov = spec.overrides
    named = set(ov.pins) | set(ov.allowed) | set(ov.exclude) | set(spec.latency_table or {})
    unknown = sorted(named - known)
    if unknown:
        raise JobError(f"unknown layers in overrides: {', '.join(unknown)}; "
                       f"quantizable layers: {', '.join(sorted(known))}")
    clash = sorted(set(ov.pins) & set(ov.exclude))
    if clash:
        raise JobError(f"layers both pinned and excluded: {', '.join(clash)}")
