"""`hawq_v1` (HAWQ): Ω_l(b) = ½ · λ_max(H_ll) · ‖ΔW_l(b)‖², λ_max by power
iteration restricted to layer l (Hessian-vector products with H_ll only).

Params: tol (relative change of the Rayleigh quotient between iterations to stop
at, default 1e-3), max_iter (default 100), seed, backend ("bitalloc" or
"pyhessian": PyHessian's power iteration per layer, same tol and iteration cap).
Power iteration finds the eigenvalue of largest magnitude; a negative one
(possible away from a minimum) gives Ω = 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from kernels.quantizer import QuantConfig
from sensitivity.bundle import ModelBundle
from sensitivity.checkpoint import current_checkpoint
from sensitivity.hvp import LossGraph
from sensitivity.layers import LayerInfo
from sensitivity.omega import quant_errors, second_order_omega
from sensitivity.params import build_params, check_fraction, check_positive_int
from sensitivity.perturb import Perturbation, frozen
from sensitivity.progress import Progress
from sensitivity.table import Choice, SensitivityTable

BACKENDS = ("bitalloc", "pyhessian")


@dataclass(frozen=True)
class PowerParams:
    tol: float = 1e-3
    max_iter: int = 100
    seed: int = 0
    backend: str = "bitalloc"

    def __post_init__(self):
        check_fraction("tol", self.tol)
        check_positive_int("max_iter", self.max_iter, 2)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")


@dataclass
class PowerResult:
    eigenvalue: float
    iterations: int
    rel_change: float  # |λ_k − λ_{k−1}| / |λ_k| at the last iteration


class BlockHessian:
    """v ↦ H_ll v on the calibration loss (batch-size-weighted over batches); the graph
    of a single calibration batch is built once and reused for every layer."""

    def __init__(self, pert: Perturbation):
        self.pert = pert
        self.total = sum(pert.bundle.batch_size(b) for b in pert.bundle.calibration)
        self._graph: LossGraph | None = None
        self.hvps = 0

    def __call__(self, i: int, v: torch.Tensor) -> torch.Tensor:
        calib = self.pert.bundle.calibration
        out = torch.zeros_like(v, dtype=torch.float64)
        for batch in calib:
            if len(calib) == 1:
                self._graph = self._graph or LossGraph(self.pert, batch)
                graph = self._graph
            else:
                graph = LossGraph(self.pert, batch, only=[i])
            out += self.pert.bundle.batch_size(batch) / self.total * graph.block_hvp(i, v).double()
            self.hvps += 1
        return out


def power_iteration(hess: BlockHessian, i: int, params: PowerParams) -> PowerResult:
    gen = torch.Generator().manual_seed(params.seed + i)
    v = torch.randn(hess.pert.shape(i), generator=gen, dtype=torch.float64)
    v /= v.norm()
    lam, change = 0.0, math.inf
    for it in range(1, params.max_iter + 1):
        hv = hess(i, v.to(hess.pert.weight(i).dtype))
        new = float((v * hv).sum())
        change = abs(new - lam) / abs(new) if new else math.inf
        lam = new
        norm = hv.norm()
        if norm == 0:
            return PowerResult(0.0, it, 0.0)
        v = hv / norm
        if it > 1 and change <= params.tol:
            return PowerResult(lam, it, change)
    return PowerResult(lam, params.max_iter, change)


def estimate(
    bundle: ModelBundle, layers: Sequence[LayerInfo], choices: Sequence[Choice],
    quant: QuantConfig, params: dict[str, Any], progress: Progress,
) -> SensitivityTable:
    start = time.perf_counter()
    p = build_params(PowerParams, params, "hawq_v1")
    names = [layer.name for layer in layers]
    ckpt = current_checkpoint()
    saved = ckpt.load()
    results: dict[str, PowerResult] = {}
    if saved and saved.get("kind") == "hawq_v1":
        results = {n: PowerResult(**r) for n, r in saved["layers"].items()}
    hvps = saved.get("hvps", 0) if saved else 0
    pert = Perturbation(bundle, names)
    hess = BlockHessian(pert)
    with frozen(bundle.model):
        for i, name in enumerate(names):
            if name in results:
                continue
            t0 = time.perf_counter()
            if p.backend == "pyhessian":
                results[name] = _pyhessian(bundle, name, p)
            else:
                before = hess.hvps
                results[name] = power_iteration(hess, i, p)
                hvps += hess.hvps - before
            left = len(names) - len(results)
            progress("sensitivity", len(results) / len(names),
                     f"{name}: λ_max {results[name].eigenvalue:.4g} after {results[name].iterations} "
                     f"iterations; ~{left * (time.perf_counter() - t0):.0f}s left")
            ckpt.save({"kind": "hawq_v1", "hvps": hvps,
                       "layers": {n: asdict(r) for n, r in results.items()}})
    errors = quant_errors(bundle.model, names, choices, quant)
    return SensitivityTable(
        method="hawq_v1",
        omega=second_order_omega({n: results[n].eigenvalue for n in names}, errors),
        layer_stats={n: {"eigenvalue": results[n].eigenvalue, "iterations": results[n].iterations,
                         "rel_change": results[n].rel_change} for n in names},
        meta={"params": asdict(p), "hvps": hvps, "seconds": time.perf_counter() - start},
    )


def _pyhessian(bundle: ModelBundle, name: str, p: PowerParams) -> PowerResult:
    from sensitivity.backends.pyhessian_backend import pyhessian_layer_eigenvalue

    with torch.enable_grad():
        lam = pyhessian_layer_eigenvalue(bundle, name, max_iter=p.max_iter, tol=p.tol, seed=p.seed)
    return PowerResult(lam, -1, math.nan)  # PyHessian does not report its iteration count
