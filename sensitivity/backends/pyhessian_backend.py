"""PyHessian (the `pyhessian` package) as a per-layer backend.

PyHessian takes every parameter with `requires_grad`, so a layer is isolated by
freezing all other parameters. Its PyPI release has defects we step around: the
trace stopping rule divides by the mean without `abs` (we pass a tolerance that
never triggers and apply our own standard-error rule to its samples), and
`density()` calls the removed `torch.eig` (not used).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from pyhessian import hessian
from torch import nn

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.stats import RunningMean

_NEVER = -1.0  # |Δmean| / (mean + 1e-6) < -1 never holds: run every iteration asked for


class _LossModule(nn.Module):
    """Lets PyHessian's `criterion(model(inputs), targets)` compute our bundle's loss."""

    def __init__(self, bundle: ModelBundle):
        super().__init__()
        self.bundle = bundle
        self.inner = bundle.model

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.bundle.loss(self.inner, batch)


def _take_loss(loss: torch.Tensor, _targets) -> torch.Tensor:
    return loss


@contextlib.contextmanager
def only_trainable(model: nn.Module, weight: nn.Parameter):
    """Temporarily make `weight` the only parameter that requires a gradient."""
    saved = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(p is weight)
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None  # PyHessian's backward(create_graph=True) leaves a cycle through .grad


def _layer_hessian(bundle: ModelBundle, batch: Batch) -> hessian:
    with warnings.catch_warnings():  # its create_graph warning; the cycle is broken above
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
        return hessian(_LossModule(bundle), _take_loss, data=(batch, None), cuda=False)


def _single_batch(bundle: ModelBundle) -> Batch:
    if len(bundle.calibration) != 1:
        raise ValueError("backend='pyhessian' works on one calibration batch; "
                         f"{bundle.name} has {len(bundle.calibration)}")
    return bundle.calibration[0]


def pyhessian_layer_trace_to_tol(bundle: ModelBundle, name: str, tol: float, min_probes: int,
                                 max_probes: int, block: int = 4, seed: int = 0) -> RunningMean:
    """Hutchinson samples of Tr(H_ll) from PyHessian, drawn `block` at a time from one
    `hessian` object (one graph) until our standard-error rule stops."""
    weight = dict(bundle.model.named_modules())[name].weight
    stats = RunningMean()
    batch = _single_batch(bundle)
    with only_trainable(bundle.model, weight):
        torch.manual_seed(seed)
        h = _layer_hessian(bundle, batch)
        while not stats.done(tol, min_probes, max_probes):
            for s in h.trace(maxIter=min(block, max_probes - stats.n), tol=_NEVER):
                stats.add(float(s))
        del h
    return stats


def pyhessian_layer_trace(bundle: ModelBundle, name: str, probes: int, seed: int = 0) -> RunningMean:
    """Hutchinson samples of Tr(H_ll) from PyHessian on the first calibration batch."""
    weight = dict(bundle.model.named_modules())[name].weight
    stats = RunningMean()
    with only_trainable(bundle.model, weight):
        torch.manual_seed(seed)  # PyHessian draws its probes from the global generator
        samples = _layer_hessian(bundle, _single_batch(bundle)).trace(maxIter=probes, tol=_NEVER)
    for s in samples:
        stats.add(float(s))
    return stats


def pyhessian_layer_eigenvalue(bundle: ModelBundle, name: str, max_iter: int = 100,
                               tol: float = 1e-3, seed: int = 0) -> float:
    """Top eigenvalue of H_ll by PyHessian's power iteration."""
    weight = dict(bundle.model.named_modules())[name].weight
    with only_trainable(bundle.model, weight):
        torch.manual_seed(seed)
        eigenvalues, _ = _layer_hessian(bundle, _single_batch(bundle)).eigenvalues(
            maxIter=max_iter, tol=tol, top_n=1)
    return float(eigenvalues[0])
