"""Fixtures for the kernel tests: the device parameter, the Triton kernels (compiled on
CUDA, interpreted on the CPU), and a float64 reference check."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# the interpreter worker's module, importable by name here and in the spawned process
# (which inherits sys.path)
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import triton_interpreter_worker as worker  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=GPU)])
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="session")
def triton_kernels():
    """The Triton launchers and the device their operands live on. With CUDA they are the
    compiled kernels, called in this process. Without, the same kernels run under
    TRITON_INTERPRET=1 in one spawned worker process: the variable must be set before
    triton itself is imported (its standard library is jit-decorated at import), which
    this process may already have done, and nothing else in the session should see it."""
    pytest.importorskip("triton")
    if HAS_CUDA:
        from kernels.triton_gemm import gemm_forward
        from kernels.triton_gemv import gemv_forward
        from kernels.triton_w8a8 import w8a8_forward

        yield SimpleNamespace(gemv=gemv_forward, gemm=gemm_forward, w8a8=w8a8_forward,
                              device=torch.device("cuda"))
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        pool.submit(worker.check, "gemv").result()  # start the worker with the variable set
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous

    def remote(kind):
        return lambda *args: pool.submit(worker.launch, kind, *args).result()

    yield SimpleNamespace(gemv=remote("gemv"), gemm=remote("gemm"), w8a8=remote("w8a8"),
                          device=torch.device("cpu"))
    pool.shutdown()


def unit_roundoff(dtype: torch.dtype) -> float:
    return {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8,
            torch.float32: 2.0**-24, torch.float64: 2.0**-53}[dtype]


def assert_matches_reference(y: torch.Tensor, x: torch.Tensor, weight64: torch.Tensor,
                             bias: torch.Tensor | None = None) -> None:
    """y ≈ x @ weight64^T + bias computed in float64, within the error bound of a dot
    product whose operands and output are rounded to y's dtype (unit roundoff u) and
    which accumulates K terms in fp32 or better:
    |err| <= 2u (|x| @ |W|^T + |y_ref|) + K 2^-24 |x| @ |W|^T."""
    x64 = x.double().cpu()
    w64 = weight64.double().cpu()
    ref = x64 @ w64.T
    if bias is not None:
        ref = ref + bias.double().cpu()
    magnitude = x64.abs() @ w64.abs().T
    accumulation = x64.shape[1] * unit_roundoff(torch.float32) * magnitude
    bound = 2 * unit_roundoff(y.dtype) * (magnitude + ref.abs()) + accumulation + 1e-12
    err = (y.double().cpu() - ref).abs()
    assert y.shape == ref.shape
    worst = float((err / bound).max())
    assert worst <= 1.0, f"error {worst:.2f}x the bound (max abs error {float(err.max()):.3g})"


@pytest.fixture(scope="session")
def check_reference():
    """`assert_matches_reference(y, x, weight64, bias=None)`."""
    return assert_matches_reference


def cycle_configs(model: torch.nn.Module, widths, group_sizes=(128,)) -> dict:
    """{layer: QuantConfig} cycling widths (and group sizes) over the quantizable layers."""
    from kernels.scheme import QuantConfig
    from sensitivity.layers import quantizable_modules

    return {name: QuantConfig(widths[i % len(widths)], group_sizes[i % len(group_sizes)])
            for i, name in enumerate(quantizable_modules(model))}


@pytest.fixture(scope="session")
def digits_packed(digits_bundle):
    """(configs, packed model) of digits-cnn at 2/3/4/8/16 bits, group sizes 128 and 32
    (several layers have K < 128: per channel)."""
    from kernels.apply import apply_allocation

    configs = cycle_configs(digits_bundle.model, (2, 3, 4, 8, 16), (128, 32))
    return configs, apply_allocation(digits_bundle.model, configs)


@pytest.fixture(scope="session")
def minilm_packed(minilm_bundle):
    """(configs, packed model) of MiniLM with 2/3/4/8 bits cycled over its layers."""
    from kernels.apply import apply_allocation

    configs = cycle_configs(minilm_bundle.model, (2, 3, 4, 8))
    return configs, apply_allocation(minilm_bundle.model, configs)
