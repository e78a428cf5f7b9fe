"""Runs in the spawned worker process that the `triton_kernels` fixture starts with
TRITON_INTERPRET=1 (a module of its own, uniquely named, so that these functions pickle
by reference whatever other `conftest` modules the session has loaded)."""

from __future__ import annotations

import importlib


def launcher(kind: str):
    """The Triton launcher `kind` ('gemv', 'gemm' or 'w8a8'), checked to be interpreted."""
    module = importlib.import_module(f"kernels.triton_{kind}")
    if not module.INTERPRETED:
        raise RuntimeError("the kernel worker did not start under TRITON_INTERPRET=1")
    return getattr(module, f"{kind}_forward")


def check(kind: str) -> bool:
    launcher(kind)
    return True


def launch(kind: str, *args):
    return launcher(kind)(*args)
