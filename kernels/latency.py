"""Per-layer, per-width latency of the packed modules on the current device: the table
the solver's `latency_ms` budget reads ({layer: {"w4a16": ms, ...}}).

Each layer is timed alone at each width: its packed module (`kernels.apply.pack_module`),
or the float layer in the activation dtype for w = 16, on random inputs of `batch_rows`
rows. CUDA: CUDA events around each call, after warm-up; CPU: `time.perf_counter`.
The figure is the median over `repeats` calls.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from kernels.apply import layer_kind, pack_module
from kernels.scheme import QuantConfig


def choice_key(w_bits: int, a_bits: int = 16) -> str:
    """Latency-table key of a choice: 'w4a16'."""
    return f"w{w_bits}a{a_bits}"


@torch.no_grad()
def measure_latency_table(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    widths: Sequence[int],
    batch_rows: int,
    device: torch.device | str,
    *,
    group_size: int = 128,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dtype: torch.dtype | None = None,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, dict[str, float]]:
    """{layer name: {choice_key(w): milliseconds}} for every layer and width.

    `layers`: (name, module) pairs of `model`'s quantizable layers. `batch_rows`: rows
    of a Linear's input (tokens) or the batch of a conv / embedding call. Conv layers
    need `input_shapes[name]`, their input without the batch dim, e.g. (C, H, W).
    `dtype`: activation dtype, default fp16 on CUDA and fp32 elsewhere."""
    device = torch.device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    if batch_rows < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch_rows and repeats must be >= 1, warmup >= 0")
    owned = {id(m) for m in model.modules()}
    table: dict[str, dict[str, float]] = {}
    for name, module in layers:
        if id(module) not in owned:
            raise ValueError(f"layer {name!r} is not a module of the model")
        kind = layer_kind(module)
        x = _example_input(name, module, kind, batch_rows, device, dtype, input_shapes or {})
        float_layer = copy.deepcopy(module).to(device=device, dtype=dtype)
        row = {}
        for bits in widths:
            config = QuantConfig(bits, group_size)
            timed = pack_module(float_layer, config) if config.quantized else float_layer
            row[choice_key(bits)] = _time(lambda m=timed, x=x: m(x), device, warmup, repeats)
        table[name] = row
    return table


def record_input_shapes(model: nn.Module, names: Sequence[str],
                        run: Callable[[], object]) -> dict[str, tuple[int, ...]]:
    """Input shapes (without the batch dim) of the named layers during one call of `run`
    (a forward pass of `model`), for `measure_latency_table(input_shapes=...)`."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name):
        def record(module, args, output):
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(names) - set(shapes))
    if missing:
        raise ValueError(f"layers never called during the forward pass: {', '.join(missing)}")
    return shapes


def _example_input(name, module, kind, rows, device, dtype, input_shapes):
    if kind == "embedding":
        return torch.randint(0, module.num_embeddings, (rows,), device=device)
    if kind == "linear":
        return torch.randn(rows, module.in_features, device=device, dtype=dtype)
    if name not in input_shapes:
        raise ValueError(f"conv layer {name!r} needs input_shapes[{name!r}] (input shape "
                         "without the batch dim); see record_input_shapes")
    return torch.randn(rows, *input_shapes[name], device=device, dtype=dtype)


def _time(call: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
