"""Block-streamed sequential GPTQ: `sensitivity.layer_inputs.quantize_sequentially`'s
order and inputs with one decoder block resident.

Each batch's hidden state is kept between blocks (`HiddenStates`, spilled to disk
past its budget). Block i is materialized, its layers are quantized group by group
from the inputs they get with every earlier layer already quantized
(`layer_inputs.quantize_block`, the whole-model pass's own code), the block's
quantized output becomes the next block's input, and the block is handed to
`on_block` (to write its codes out) and released. An untied LM head is quantized
last, from the final norm of the last hidden states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
from torch import nn

from kernels.hessian import LayerHessian, input_rows
from sensitivity.bundle import Batch
from sensitivity.layer_inputs import quantize_block
from sensitivity.streaming.gauss_newton import HEAD
from sensitivity.streaming.hidden import HiddenStates
from sensitivity.streaming.skeleton import BlockCall, StreamedCausalLM

QuantizeLayer = Callable[[str, nn.Module, LayerHessian], None]  # must replace module.weight


@torch.no_grad()
def quantize_streamed(lm: StreamedCausalLM, batches: Sequence[Batch], names: Sequence[str],
                      quantize_layer: QuantizeLayer, *,
                      on_block: Callable[[int, nn.Module], None] | None = None,
                      report: Callable[[str], None] = lambda name: None,
                      hidden: HiddenStates | None = None) -> list[str]:
    """Quantize the named layers (block linears and an untied `lm_head`) in forward
    order; returns the order used. `quantize_layer(name, module, hessian)` replaces the
    materialized module's weight by its quantized one."""
    pending = set(names)
    bad = [n for n in pending if lm.block_of(n) is None and not (n == HEAD and not lm.tied)]
    if bad:
        raise ValueError(f"streamed GPTQ quantizes block layers and an untied head, not "
                         f"{', '.join(sorted(bad))}")
    order: list[str] = []
    hidden = hidden if hidden is not None else HiddenStates()
    calls = [lm.block_calls(b) for b in batches]
    for b, call in enumerate(calls):
        hidden.put(b, call.embeddings)
    for i in range(len(lm)):
        mine = {n for n in pending if lm.block_of(n) == i}
        with lm.block(i) as block:
            if mine:
                modules = lm.block_names(i)
                runs = [partial(_run_block, lm, i, hidden.get(b), call) for b, call in enumerate(calls)]

                def commit(group: Mapping[str, LayerHessian], modules=modules) -> None:
                    for name, hessian in group.items():
                        quantize_layer(name, modules[name], hessian)
                        pending.discard(name)
                        order.append(name)
                        report(name)

                quantize_block(block, modules, mine, runs, commit)
            for b, call in enumerate(calls):
                hidden.put(b, lm.run_block(i, hidden.get(b), call))
            if on_block is not None:
                on_block(i, block)
    if HEAD in pending:
        head = lm.model.lm_head
        acc = LayerHessian.empty(head.in_features)
        for b in range(len(calls)):
            acc.add(input_rows(head, lm.decoder.norm(hidden.get(b))))
        quantize_layer(HEAD, head, acc)
        order.append(HEAD)
        report(HEAD)
    hidden.close()
    return order


def _run_block(lm: StreamedCausalLM, i: int, h: torch.Tensor, call: BlockCall,
               block: nn.Module) -> torch.Tensor:
    return lm.run_block(i, h, call)  # `block` is lm.blocks[i], materialized
