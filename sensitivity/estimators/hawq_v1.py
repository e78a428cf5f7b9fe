"""`hawq_v1` (HAWQ): Ω_l(b) = ½ · λ_max(H_ll) · ‖ΔW_l(b)‖², λ_max by power
iteration restricted to layer l (Hessian-vector products with H_ll only).

Params (`sensitivity.methods.HawqV1Config`): tol (relative change of the Rayleigh
quotient between iterations to stop at, default 1e-3), max_iter (default 100),
seed, backend ("bitalloc" or "pyhessian": PyHessian's power iteration per layer,
same tol and iteration cap). Power iteration finds the eigenvalue of largest
magnitude; a negative one (possible away from a minimum) gives Ω = 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from sensitivity.bundle import ModelBundle
from sensitivity.estimators.context import EstimatorContext, WeightedBatch
from sensitivity.hvp import LossGraph
from sensitivity.methods import HawqV1Config
from sensitivity.omega import second_order_omega
from sensitivity.perturb import Perturbation, frozen
from sensitivity.table import SensitivityTable


@dataclass
class PowerResult:
    eigenvalue: float
    iterations: int
    rel_change: float  # |λ_k − λ_{k−1}| / |λ_k| at the last iteration


class BlockHessian:
    """v ↦ H_ll v on the calibration loss (batch-size-weighted over batches); the graph
    of a single calibration batch is built once and reused for every layer."""

    def __init__(self, pert: Perturbation, batches: list[WeightedBatch]):
        self.pert = pert
        self.batches = batches
        self._graph: LossGraph | None = None
        self.hvps = 0

    def __call__(self, i: int, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v, dtype=torch.float64)
        for wb in self.batches:
            if len(self.batches) == 1:
                self._graph = self._graph or LossGraph(self.pert, wb.batch)
                graph = self._graph
            else:
                graph = LossGraph(self.pert, wb.batch, only=[i])
            out += wb.share * graph.block_hvp(i, v).double()
            self.hvps += 1
        return out


def power_iteration(hess: BlockHessian, i: int, config: HawqV1Config) -> PowerResult:
    gen = torch.Generator().manual_seed(config.seed + i)
    v = torch.randn(hess.pert.shape(i), generator=gen, dtype=torch.float64)
    v /= v.norm()
    lam, change = 0.0, math.inf
    for it in range(1, config.max_iter + 1):
        hv = hess(i, v.to(hess.pert.weight(i).dtype))
        new = float((v * hv).sum())
        change = abs(new - lam) / abs(new) if new else math.inf
        lam = new
        norm = hv.norm()
        if norm == 0:
            return PowerResult(0.0, it, 0.0)
        v = hv / norm
        if it > 1 and change <= config.tol:
            return PowerResult(lam, it, change)
    return PowerResult(lam, config.max_iter, change)


def estimate(ctx: EstimatorContext, config: HawqV1Config) -> SensitivityTable:
    start = time.perf_counter()
    names = ctx.names
    saved = ctx.checkpoint.load("hawq_v1")
    results: dict[str, PowerResult] = {}
    if saved:
        results = {n: PowerResult(**r) for n, r in saved["layers"].items()}
    hvps = saved.get("hvps", 0) if saved else 0
    hess = BlockHessian(Perturbation(ctx.bundle, names), ctx.batches)
    with frozen(ctx.bundle.model):
        for i, name in enumerate(names):
            if name in results:
                continue
            t0 = time.perf_counter()
            if config.backend == "pyhessian":
                results[name] = _pyhessian(ctx.bundle, name, config)
            else:
                before = hess.hvps
                results[name] = power_iteration(hess, i, config)
                hvps += hess.hvps - before
            left = len(names) - len(results)
            ctx.progress(len(results) / len(names),
                         f"{name}: λ_max {results[name].eigenvalue:.4g} after {results[name].iterations} "
                         f"iterations; ~{left * (time.perf_counter() - t0):.0f}s left")
            ctx.checkpoint.save("hawq_v1", {"hvps": hvps,
                                            "layers": {n: asdict(r) for n, r in results.items()}})
    return SensitivityTable(
        method="hawq_v1",
        omega=second_order_omega({n: results[n].eigenvalue for n in names}, ctx.quant_errors()),
        layer_stats={n: {"eigenvalue": results[n].eigenvalue, "iterations": results[n].iterations,
                         "rel_change": results[n].rel_change} for n in names},
        meta={"params": config.meta_params(), "hvps": hvps, "seconds": time.perf_counter() - start},
    )


def _pyhessian(bundle: ModelBundle, name: str, config: HawqV1Config) -> PowerResult:
    from sensitivity.backends.pyhessian_backend import pyhessian_layer_eigenvalue

    with torch.enable_grad():
        lam = pyhessian_layer_eigenvalue(bundle, name, max_iter=config.max_iter, tol=config.tol,
                                         seed=config.seed)
    return PowerResult(lam, -1, math.nan)  # PyHessian does not report its iteration count
