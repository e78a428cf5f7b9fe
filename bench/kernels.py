"""Benchmark of the packed weight-only matmul kernels against fp16 `torch.matmul`.

    .venv/bin/python bench/kernels.py [--out bench/results/kernels.json] [--quick]

On a CUDA device: shapes (N x K) 4096x4096, 4096x11008, 11008x4096, 8192x8192; rows 1, 16
and 64; widths 2, 3, 4, 8 at g = 128; fp16 activations. Each case is timed as CUDA graph
replays of `--inner` back-to-back calls between two CUDA events (kernel time, without
Python launch overhead; the op is graph-safe), after warm-up (which includes Triton
autotuning), and reported as the median over `--repeats`; eager timings (events around
plain calls) are recorded too. Speedup = fp16 matmul time / kernel time, both from the
same run. Achieved bandwidth = bytes read and written per call (packed weight, scales,
zeros, activations, output) / time, as a share of the device's copy bandwidth measured
at the start (a device-to-device copy of 1 GiB). Prints a table and writes JSON.

W8A8 rows: the integer path of a packed layer with a quantized input (`kernels.int8`:
dynamic per-token symmetric int8 input, symmetric int8 weight per output channel; the fused
Triton kernel on CUDA, `torch._int_mm` on the CPU) against the same fp16 matmul, timed
eagerly (events around plain calls), its error against the fake-quantized float product.

Without CUDA it says so and runs a tiny CPU sanity check of the torch path and the W8A8
integer path instead (and exits 0), writing `bench/results/kernels-cpu-sanity.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

# this file is named like the package it measures: import the package, not this file
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

from kernels.activation import ActivationQuantizer  # noqa: E402
from kernels.int8 import IntWeight, int8_linear  # noqa: E402
from kernels.ops import quant_linear  # noqa: E402
from kernels.packed_weight import PackedWeight, pack_weight  # noqa: E402
from kernels.scheme import QuantConfig  # noqa: E402

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 8192)]  # (N, K)
ROWS = [1, 16, 64]
WIDTHS = [2, 3, 4, 8]
GROUP_SIZE = 128
RESULTS = _HERE / "results"
TARGETS = {  # H100, 8192 x 8192: speedup over fp16 the kernels should reach
    "W4 g128, 1 row": 2.5, "W2 g128, 1 row": 4.0, "W8 g128, 1 row": 1.7, "W4 g128, 16 rows": 2.0,
}


def copy_bandwidth_gbs(device: torch.device, gib: float = 1.0) -> float:
    """Device-to-device copy bandwidth (read + write), GB/s."""
    n = int(gib * 2**30) // 4
    src = torch.empty(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n * 4 / statistics.median(times) / 1e9


def time_graph_ms(fn, inner: int, repeats: int) -> float:
    """Median ms per call over CUDA graph replays of `inner` calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def time_eager_ms(fn, repeats: int) -> float:
    """Median ms of single calls between CUDA events, after warm-up."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


W8A8_INPUT = ActivationQuantizer(8, "dynamic", True, -1)  # per-token symmetric int8


def w8a8_operands(w: torch.Tensor):
    """(IntWeight, dequantized weight) of `w` at 8 bits, symmetric, per output channel."""
    packed = pack_weight(w, QuantConfig(8, w.shape[1], symmetric=True))
    return IntWeight.from_packed(packed), packed.dequantize(torch.float32)


def w8a8_error(x: torch.Tensor, weight: IntWeight, dense: torch.Tensor) -> float:
    """max |int8 path − fake-quantized float product| / max |product|."""
    ref = W8A8_INPUT.fake_quantize(x.float()) @ dense.T
    return float((int8_linear(x, W8A8_INPUT, weight).float() - ref).abs().max() / ref.abs().max())


def packed_bytes(packed: PackedWeight) -> int:
    return sum(t.numel() * t.element_size() for t in (packed.qweight, packed.scales, packed.zeros))


def bench_gpu(args) -> dict:
    device = torch.device("cuda")
    bandwidth = copy_bandwidth_gbs(device)
    print(f"device: {torch.cuda.get_device_name(device)}; copy bandwidth {bandwidth:.0f} GB/s")
    shapes = SHAPES[-1:] if args.quick else SHAPES
    cases = []
    header = (f"{'N x K':>13} {'rows':>4} {'w':>2} {'kernel ms':>9} {'fp16 ms':>8} "
              f"{'speedup':>7} {'GB/s':>6} {'% copy bw':>9} {'rel err':>8}")
    print(header)
    for n, k in shapes:
        gen = torch.Generator(device=device).manual_seed(0)
        w16 = torch.randn(n, k, device=device, dtype=torch.float16, generator=gen) * 0.02
        for bits in WIDTHS:
            packed = pack_weight(w16, QuantConfig(bits, GROUP_SIZE))
            dense = packed.dequantize(torch.float16)
            for rows in ROWS:
                x = torch.randn(rows, k, device=device, dtype=torch.float16, generator=gen)
                ref = x @ dense.T
                err = float((quant_linear(x, packed) - ref).abs().max() / ref.abs().max())
                ms = time_graph_ms(lambda x=x, p=packed: quant_linear(x, p), args.inner,
                                   args.repeats)
                ms_eager = time_eager_ms(lambda x=x, p=packed: quant_linear(x, p), args.repeats)
                fp16_ms = time_graph_ms(lambda x=x, d=dense: torch.matmul(x, d.T), args.inner,
                                        args.repeats)
                moved = packed_bytes(packed) + x.numel() * 2 + rows * n * 2
                gbs = moved / (ms / 1e3) / 1e9
                case = {"n": n, "k": k, "rows": rows, "bits": bits, "group_size": GROUP_SIZE,
                        "kernel_ms": ms, "kernel_eager_ms": ms_eager, "fp16_ms": fp16_ms,
                        "speedup": fp16_ms / ms, "bytes": moved, "gbs": gbs,
                        "copy_bw_share": gbs / bandwidth, "max_rel_error": err}
                cases.append(case)
                print(f"{n:>6}x{k:<6} {rows:>4} {bits:>2} {ms:>9.4f} {fp16_ms:>8.4f} "
                      f"{fp16_ms / ms:>6.2f}x {gbs:>6.0f} {100 * gbs / bandwidth:>8.1f}% "
                      f"{err:>8.1e}")
            del packed, dense
        weight, dense = w8a8_operands(w16.float())
        dense16 = dense.half()
        for rows in ROWS:
            x = torch.randn(rows, k, device=device, dtype=torch.float16, generator=gen)
            err = w8a8_error(x, weight, dense)
            ms = time_eager_ms(lambda x=x, w=weight: int8_linear(x, W8A8_INPUT, w), args.repeats)
            fp16_ms = time_eager_ms(lambda x=x, d=dense16: torch.matmul(x, d.T), args.repeats)
            cases.append({"n": n, "k": k, "rows": rows, "bits": "w8a8", "group_size": k,
                          "kernel_eager_ms": ms, "fp16_eager_ms": fp16_ms, "speedup": fp16_ms / ms,
                          "max_rel_error": err})
            print(f"{n:>6}x{k:<6} {rows:>4} w8a8 {ms:>9.4f} {fp16_ms:>8.4f} {fp16_ms / ms:>6.2f}x "
                  f"(eager) {err:>8.1e}")
        del weight, dense, dense16
    return {"device": torch.cuda.get_device_name(device), "copy_bandwidth_gbs": bandwidth,
            "torch": torch.__version__, "timing": "CUDA graph replay, median", "targets": TARGETS,
            "cases": cases}


def bench_cpu_sanity() -> dict:
    """A tiny check that the torch path runs and agrees with a dense matmul."""
    print("no CUDA device: the GPU benchmark needs one. Running a tiny CPU sanity check of "
          "the torch path instead (not a performance figure).")
    n, k = 256, 512
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(0))
    cases = []
    for bits in WIDTHS:
        packed = pack_weight(w, QuantConfig(bits, GROUP_SIZE))
        dense = packed.dequantize()
        for rows in (1, 4):
            x = torch.randn(rows, k)
            t0 = time.perf_counter()
            y = quant_linear(x, packed)
            ms = (time.perf_counter() - t0) * 1e3
            err = float((y - x @ dense.T).abs().max())
            cases.append({"n": n, "k": k, "rows": rows, "bits": bits, "ms": ms,
                          "max_abs_error": err})
            print(f"  {n}x{k} rows={rows} w{bits}: {ms:.2f} ms, max |error| {err:.1e}")
            if err > 1e-3:
                raise SystemExit(f"torch path disagrees with the dense matmul: {err}")
    weight, dense = w8a8_operands(w)
    for rows in (1, 4):
        x = torch.randn(rows, k)
        t0 = time.perf_counter()
        int8_linear(x, W8A8_INPUT, weight)
        ms = (time.perf_counter() - t0) * 1e3
        err = w8a8_error(x, weight, dense)
        cases.append({"n": n, "k": k, "rows": rows, "bits": "w8a8", "ms": ms, "max_rel_error": err})
        print(f"  {n}x{k} rows={rows} w8a8 (int8 x int8 -> int32): {ms:.2f} ms, "
              f"max relative error {err:.1e}")
        if err > 1e-5:
            raise SystemExit(f"the W8A8 integer path disagrees with the fake-quantized product: {err}")
    return {"device": "cpu", "note": "no CUDA device: CPU sanity check only",
            "platform": platform.processor() or platform.machine(), "cases": cases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument("--quick", action="store_true", help="only the 8192 x 8192 shape")
    parser.add_argument("--inner", type=int, default=20, help="calls per graph replay")
    parser.add_argument("--repeats", type=int, default=25, help="timed replays (median)")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        result, default = bench_gpu(args), RESULTS / "kernels.json"
    else:
        result, default = bench_cpu_sanity(), RESULTS / "kernels-cpu-sanity.json"
    out = args.out or default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
