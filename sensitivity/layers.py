"""Layer discovery (DESIGN §3): which weights are quantizable, their size and
MACs per sample, which must share bits, and which never reach the loss.

A quantizable layer is the weight of an `nn.Linear`, transformers' `Conv1D`
(stored (in, out); its record has the (out, in) shape the quantizer and the size
accounting see), `nn.Conv1d/2d` or `nn.Embedding`. A weight held by several
modules (input embeddings tied to the LM head) is one layer, under the embedding's
name: quantized once, its bytes counted once, its MACs those of the head's matmul,
and its record lists the modules it also serves (`shared_by`).

No silent partial results: every parameter of two or more dimensions counts as a
matmul weight, and a model whose quantizable share of those is below
`MIN_QUANTIZABLE_SHARE` fails with the module types left out. The share and the
types left out are written into the bundle's info (the result's model facts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kernels.layout import is_transposed_linear, logical_shape
from sensitivity.bundle import ModelBundle
from sensitivity.memory import release_freed_memory
from sensitivity.perturb import frozen

QUANTIZABLE = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Embedding: "embedding"}
HF_CONV1D = "hf_conv1d"  # transformers' Conv1D (GPT-2): a linear layer storing its weight (in, out)
# A model must have at least this share of its matmul-weight parameters in quantizable layers.
MIN_QUANTIZABLE_SHARE = 0.9
# Projections a serving format may fuse into one matmul (and so one width): same parent module.
FUSED_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass(frozen=True)
class LayerInfo:
    name: str  # module name; the weight is `<name>.weight`
    kind: str  # linear | hf_conv1d | conv1d | conv2d | embedding
    shape: tuple[int, ...]  # as the quantizer sees it: (out, in, ...), also for Conv1D
    params: int
    macs: int  # multiply-accumulates per sample, measured on a calibration batch
    group: str | None  # layers with the same group must take the same bits
    used: bool  # False: no gradient path to the loss (reported, left unquantized)
    shared_by: tuple[str, ...] = ()  # other modules holding this weight (a tied LM head)


@dataclass(frozen=True)
class Coverage:
    """How much of the model's matmul weights (parameters of 2+ dimensions) the
    quantizable layers hold, and what holds the rest (module type -> parameters)."""

    matmul_params: int
    quantizable_params: int
    left_out: dict[str, int]

    @property
    def share(self) -> float:
        return self.quantizable_params / self.matmul_params if self.matmul_params else 1.0

    def info(self) -> dict[str, float | str]:
        left = "; ".join(f"{t} ({n:,} params)" for t, n in
                         sorted(self.left_out.items(), key=lambda kv: -kv[1])) or "none"
        return {"quantizable_share_pct": round(100 * self.share, 2),
                "matmul_weights_left_out": left}


def layer_kind(module: nn.Module) -> str | None:
    if is_transposed_linear(module):
        return HF_CONV1D
    return QUANTIZABLE.get(type(module))


def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """One module per quantizable weight, in module order. A weight several modules
    hold is listed once, under an embedding holding it if there is one (else its
    first holder); `weight_users` names the others."""
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if name and layer_kind(m) is not None:
            holders.setdefault(id(m.weight), []).append((name, m))
    owners = {}
    for group in holders.values():
        name, m = next(((n, m) for n, m in group if isinstance(m, nn.Embedding)), group[0])
        owners[name] = m
    order = {name: i for i, (name, _) in enumerate(model.named_modules(remove_duplicate=False))}
    return dict(sorted(owners.items(), key=lambda kv: order[kv[0]]))


def weight_users(model: nn.Module, modules: dict[str, nn.Module]) -> dict[str, tuple[str, ...]]:
    """For each quantizable layer, the other modules holding its weight."""
    by_weight = {id(m.weight): name for name, m in modules.items()}
    users: dict[str, list[str]] = {name: [] for name in modules}
    for name, m in model.named_modules(remove_duplicate=False):
        owner = by_weight.get(id(getattr(m, "weight", None)))
        if name and owner is not None and name != owner:
            users[owner].append(name)
    return {name: tuple(u) for name, u in users.items()}


def coverage(model: nn.Module, modules: dict[str, nn.Module]) -> Coverage:
    quantizable = {id(m.weight) for m in modules.values()}
    seen: set[int] = set()
    total = covered = 0
    left_out: dict[str, int] = {}
    for owner in model.modules():
        for p in owner.parameters(recurse=False):
            if id(p) in seen or p.dim() < 2:
                continue
            seen.add(id(p))
            total += p.numel()
            if id(p) in quantizable:
                covered += p.numel()
            else:
                kind = type(owner).__name__
                left_out[kind] = left_out.get(kind, 0) + p.numel()
    return Coverage(total, covered, left_out)


def check_coverage(name: str, cov: Coverage, minimum: float = MIN_QUANTIZABLE_SHARE) -> None:
    if cov.share < minimum:
        raise ValueError(
            f"{name}: only {100 * cov.share:.1f}% of the matmul-weight parameters are in layers "
            f"bitalloc can quantize (at least {100 * minimum:.0f}% needed); left out by module "
            f"type: {cov.info()['matmul_weights_left_out']}. Quantizable layers are Linear, "
            "transformers' Conv1D, Conv1d, Conv2d and Embedding")


def discover_layers(bundle: ModelBundle, *, fused: bool = False) -> list[LayerInfo]:
    """Every quantizable layer of the bundle's model, in module order. With `fused`,
    projections a serving format fuses (q/k/v, gate/up under one parent) are tied.
    Raises ValueError when too little of the model is quantizable."""
    model = bundle.model
    modules = quantizable_modules(model)
    cov = coverage(model, modules)
    bundle.info.update(cov.info())
    check_coverage(bundle.name, cov)
    users = weight_users(model, modules)
    batch = bundle.calibration[0]
    macs = _measure_macs(bundle, modules, users, batch)
    # a streamed forward keeps no graph; every projection of a decoder it streams is used
    used = {name: True for name in modules} if bundle.streamed is not None else \
        _reaches_loss(bundle, modules, users, batch)
    release_freed_memory()  # that backward pass's activations
    tied = list(bundle.tied_groups) + (fused_groups(modules) if fused else [])
    groups = _tied_groups(bundle.name, tied, modules)
    return [
        LayerInfo(
            name=name,
            kind=layer_kind(m),
            shape=logical_shape(m),
            params=m.weight.numel(),
            macs=macs.get(name, 0),
            group=groups.get(name),
            used=used[name],
            shared_by=users[name],
        )
        for name, m in modules.items()
    ]


def fused_groups(names: Iterable[str],
                 patterns: Sequence[Sequence[str]] = FUSED_PROJECTIONS) -> list[list[str]]:
    """Groups of sibling projections (`<parent>.q_proj`, `.k_proj`, `.v_proj`, ...)
    present in full among `names`."""
    names = list(names)
    present = set(names)
    groups = []
    for name in names:
        parent, _, leaf = name.rpartition(".")
        for pattern in patterns:
            if leaf == pattern[0]:
                members = [f"{parent}.{p}" if parent else p for p in pattern]
                if all(m in present for m in members):
                    groups.append(members)
    return groups


def _macs_of(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() // module.out_features * module.in_features * module.out_features
    if is_transposed_linear(module):
        nx, nf = module.weight.shape
        return output.numel() // nf * nx * nf
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return output.numel() * (module.in_channels // module.groups * math.prod(module.kernel_size))
    return 0  # embeddings are lookups: no multiply-accumulates


def _measure_macs(bundle: ModelBundle, modules: dict[str, nn.Module],
                  users: dict[str, tuple[str, ...]], batch) -> dict[str, int]:
    """MACs per sample; a shared weight's count includes its users' matmuls (the LM head)."""
    counts: dict[str, int] = {}
    all_modules = dict(bundle.model.named_modules(remove_duplicate=False))

    def hook(name):
        def count(module, inputs, output):
            counts[name] = counts.get(name, 0) + _macs_of(module, output)
        return count

    targets = [(name, m) for name, m in modules.items()]
    targets += [(name, all_modules[u]) for name in modules for u in users[name]]
    handles = [m.register_forward_hook(hook(name)) for name, m in targets]
    try:
        with torch.no_grad():
            bundle.forward(bundle.model, batch)
    finally:
        for h in handles:
            h.remove()
    n = bundle.batch_size(batch)
    return {name: round(c / n) for name, c in counts.items()}


def _reaches_loss(bundle: ModelBundle, modules: dict[str, nn.Module],
                  users: dict[str, tuple[str, ...]], batch) -> dict[str, bool]:
    """Whether the loss depends on each layer's weight: on the output of one of the
    modules computing with it. Taken with the parameters frozen (outputs that need
    no gradient become leaves), so autograd keeps no weight gradients and none of
    what only they would need (a model-sized saving on an LLM)."""
    all_modules = dict(bundle.model.named_modules(remove_duplicate=False))
    outputs: list[tuple[str, torch.Tensor]] = []

    def hook(name):
        def keep(module, inputs, output):
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            outputs.append((name, output))
            return output
        return keep

    handles = [all_modules[m].register_forward_hook(hook(name))
               for name in modules for m in (name, *users[name])]
    try:
        with frozen(bundle.model), torch.enable_grad():
            loss = bundle.loss(bundle.model, batch)
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(loss, [t for _, t in outputs], allow_unused=True) if outputs else []
    reached = {name: False for name in modules}
    for (name, _), g in zip(outputs, grads):
        reached[name] = reached[name] or g is not None
    return reached


def _tied_groups(label: str, tied: Sequence[Sequence[str]],
                 modules: dict[str, nn.Module]) -> dict[str, str]:
    groups: dict[str, str] = {}
    for members in tied:
        missing = [m for m in members if m not in modules]
        if missing:
            raise ValueError(f"{label}: tied layers {missing} are not quantizable layers")
        for member in members:
            groups[member] = members[0]
    return groups
