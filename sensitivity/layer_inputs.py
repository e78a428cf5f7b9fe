"""Layer inputs from calibration data, collected with forward pre-hooks: the XᵀX
(`kernels.hessian.LayerHessian`) GPTQ and AdaQuant quantize a layer with, over the
bundle's quantizer calibration (`quantizer_runs`: `ModelBundle.quantizer_batches`,
which may hold many more tokens than the sensitivity methods' `calibration`).

Two ways to collect:

* `collect_hessians`: every layer's inputs from the model as it is (full precision),
  in one pass over the calibration batches. The sensitivity tables use these: one
  Hessian per layer, reused for every candidate width.
* `quantize_sequentially`: GPTQ's order for applying an allocation. Layers are
  quantized in the order the forward reaches them, each from inputs computed with
  every earlier layer already at its chosen width. One pass over the calibration
  batches quantizes the first layer the forward reaches together with the layers
  that read the very same input tensor (Q/K/V, gate/up), and stops the forward
  right after them; the next pass continues from there.

Layers reading the same input tensor share one LayerHessian (computed once), so
memory is K² per distinct input, never the inputs themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from kernels.hessian import LayerHessian, input_rows
from kernels.layout import is_linear_like, quantizer_view
from sensitivity.bundle import ModelBundle

BatchRun = Callable[[nn.Module], object]  # runs the model on one calibration batch


class _Stop(Exception):
    """Raised from a hook: the rest of this forward is not needed."""


def calibration_runs(bundle: ModelBundle) -> list[BatchRun]:
    """One callable per calibration batch, running `bundle.forward` on it."""
    return [partial(_forward, bundle, batch) for batch in bundle.calibration]


def quantizer_runs(bundle: ModelBundle) -> list[BatchRun]:
    """One callable per batch of the quantizer's calibration (`bundle.quantizer_batches`)."""
    return [partial(_forward, bundle, batch) for batch in bundle.quantizer_batches]


def _forward(bundle: ModelBundle, batch, model: nn.Module):
    return bundle.forward(model, batch)


def _input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


class _Accumulators:
    """name -> LayerHessian, shared by linear layers that read the same tensor."""

    def __init__(self):
        self.by_name: dict[str, LayerHessian] = {}
        self._fed: dict[int, tuple[torch.Tensor, LayerHessian]] = {}  # this batch's inputs

    def new_batch(self) -> None:
        self._fed.clear()

    def add(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        prev = self._fed.get(id(x))
        shared = (prev is not None and prev[0] is x and is_linear_like(module)
                  and prev[1].k == x.shape[-1])
        if shared and self.by_name.setdefault(name, prev[1]) is prev[1]:
            return  # this tensor is already counted in the shared Hessian
        rows = input_rows(module, x)
        acc = self.by_name.get(name)
        if acc is None:
            acc = self.by_name[name] = LayerHessian.empty(rows.shape[1], device=rows.device)
        acc.add(rows)
        self._fed[id(x)] = (x, acc)


@torch.no_grad()
def collect_hessians(model: nn.Module, names: Iterable[str],
                     runs: Sequence[BatchRun]) -> dict[str, LayerHessian]:
    """XᵀX of each named layer's inputs over the calibration batches, the model as it is."""
    modules = dict(model.named_modules())
    accs = _Accumulators()

    def hook(name, module, args, kwargs):
        accs.add(name, module, _input(args, kwargs))

    handles = [modules[n].register_forward_pre_hook(partial(hook, n), with_kwargs=True) for n in names]
    try:
        for run in runs:
            accs.new_batch()
            run(model)
    finally:
        for h in handles:
            h.remove()
    return {n: accs.by_name.get(n) or LayerHessian.empty(_k(modules[n])) for n in names}


def _k(module: nn.Module) -> int:
    return int(quantizer_view(module)[0].numel())


@torch.no_grad()
def quantize_sequentially(model: nn.Module, names: Sequence[str], runs: Sequence[BatchRun],
                          quantize_layer: Callable[[str, LayerHessian], None],
                          report: Callable[[str], None] = lambda name: None) -> list[str]:
    """Quantize the named layers of `model` in forward order, each from the inputs it
    receives with the earlier ones already quantized. `quantize_layer(name, hessian)`
    must replace that layer's weight in `model`. Returns the order used.

    A model made of a list of blocks run one after the other (a transformer's layers)
    is taken block by block: the blocks' inputs are kept between them (one hidden
    state per calibration batch), so each pass runs one block, not the model up to it."""
    modules = dict(model.named_modules())
    pending = set(names)
    order: list[str] = []

    def commit(group: Mapping[str, LayerHessian]) -> None:
        for name, hessian in group.items():
            quantize_layer(name, hessian)
            pending.discard(name)
            order.append(name)
            report(name)

    blocks = _find_blocks(model, pending)
    while pending:
        group = _next_group(model, modules, pending, runs)
        if not group:
            raise ValueError("the calibration data never reaches "
                             f"{', '.join(sorted(pending))}: no inputs to quantize them from")
        if blocks is not None and any(_in_block(n, blocks) for n in group):
            inputs = _block_inputs(model, blocks, runs)
            if inputs is not None:
                _quantize_blocks(blocks, inputs, modules, pending, commit)
                blocks = None
                continue
            blocks = None  # not a chain of blocks after all: model-wide passes
        commit(group)
    return order


@dataclass
class _Blocks:
    prefix: str
    modules: list[nn.Module]


def _find_blocks(model: nn.Module, names: Iterable[str]) -> _Blocks | None:
    """The list of same-type blocks holding the most of the named layers, if any."""
    best, most = None, 0
    for prefix, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(c) for c in m}) == 1:
            count = sum(1 for n in names if n.startswith(prefix + "."))
            if count > most:
                best, most = _Blocks(prefix, list(m)), count
    return best


def _in_block(name: str, blocks: _Blocks) -> bool:
    return name.startswith(blocks.prefix + ".")


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _no_cache(value):
    """A key/value cache is written to by every call: a block re-run gets none."""
    return None if type(value).__name__.endswith("Cache") else value


def _block_inputs(model: nn.Module, blocks: _Blocks, runs: Sequence[BatchRun]):
    """Per batch, each block's (args, kwargs), the first block's hidden state as the
    model now computes it; None unless every batch runs the blocks once each, in order,
    each block's first input being the previous block's first output."""
    n = len(blocks.modules)
    inputs = []
    for run in runs:
        calls: list = []
        outs: list = []
        handles = []
        for i, block in enumerate(blocks.modules):
            handles.append(block.register_forward_pre_hook(partial(_record_call, calls, i), with_kwargs=True))
            handles.append(block.register_forward_hook(partial(_record_output, outs, i)))
        try:
            run(model)
        finally:
            for h in handles:
                h.remove()
        if [c[0] for c in calls] != list(range(n)) or [o[0] for o in outs] != list(range(n)):
            return None
        if any(not calls[i][1] or calls[i][1][0] is not outs[i - 1][1] for i in range(1, n)):
            return None
        inputs.append([(args if i == 0 else (None, *args[1:]),
                        {k: _no_cache(v) for k, v in kwargs.items()}) for i, args, kwargs in calls])
    return inputs


def _record_call(into: list, i: int, module, args, kwargs) -> None:
    into.append((i, args, kwargs))


def _record_output(into: list, i: int, module, args, output) -> None:
    into.append((i, _first(output)))


def _quantize_blocks(blocks: _Blocks, inputs, modules: Mapping[str, nn.Module], pending: set[str],
                     commit: Callable[[Mapping[str, LayerHessian]], None]) -> None:
    """Every pending layer inside the blocks, block by block, from kept hidden states."""
    hidden = [batch[0][0][0] for batch in inputs]
    for i, block in enumerate(blocks.modules):
        calls = [(batch[i][0][1:], batch[i][1]) for batch in inputs]
        runs = [partial(_run_block, h, args, kwargs) for h, (args, kwargs) in zip(hidden, calls)]
        quantize_block(block, modules, {n for n in pending if n.startswith(f"{blocks.prefix}.{i}.")},
                       runs, commit)
        hidden = [_first(run(block)) for run in runs]


def quantize_block(block: nn.Module, modules: Mapping[str, nn.Module], names: set[str],
                   runs: Sequence[BatchRun], commit: Callable[[Mapping[str, LayerHessian]], None]) -> None:
    """The named layers of one block, group by group in forward order; `runs` run the
    block on each batch's input (`modules`: name -> module for the names)."""
    mine = set(names)
    while mine:
        group = _next_group(block, modules, mine, runs)
        if not group:
            raise ValueError("the calibration data never reaches "
                             f"{', '.join(sorted(mine))}: no inputs to quantize them from")
        commit(group)
        mine -= set(group)


def _run_block(hidden: torch.Tensor, args: tuple, kwargs: dict, block: nn.Module):
    return block(hidden, *args, **kwargs)


def _next_group(model: nn.Module, modules: Mapping[str, nn.Module], pending: set[str],
                runs: Sequence[BatchRun]) -> dict[str, LayerHessian]:
    """The Hessians of the first pending layer(s) the forward reaches: the first one
    and those reading its very input tensor (the group is fixed by the first batch)."""
    accs = _Accumulators()
    group: list[str] = []
    batch = {"index": 0, "input": None, "seen": set()}

    def hook(name, module, args, kwargs):
        x = _input(args, kwargs)
        if name in batch["seen"] or (batch["input"] is not None and x is not batch["input"]):
            raise _Stop  # past the group: what follows depends on layers not yet quantized
        if batch["index"] == 0:
            group.append(name)
        elif name not in group:
            raise _Stop
        batch["input"] = x
        batch["seen"].add(name)
        accs.add(name, module, x)

    handles = [modules[n].register_forward_pre_hook(partial(hook, n), with_kwargs=True)
               for n in pending]
    try:
        for i, run in enumerate(runs):
            accs.new_batch()
            batch.update(index=i, input=None, seen=set())
            try:
                run(model)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return {n: accs.by_name[n] for n in group}
