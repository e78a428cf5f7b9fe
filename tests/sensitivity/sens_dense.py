"""Dense references: the full Hessian (and Gauss–Newton matrix) of a tiny bundle's
calibration loss over the weights of the named layers, blocks by layer."""

from __future__ import annotations

import copy

import torch
from torch.func import functional_call


class Dense:
    def __init__(self, bundle, names: list[str]):
        modules = dict(bundle.model.named_modules())
        self.bundle, self.names = bundle, names
        self.w0 = [modules[n].weight.detach().clone().double() for n in names]
        self.sizes = [w.numel() for w in self.w0]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(names) + 1)]
        self.total = sum(bundle.batch_size(b) for b in bundle.calibration)
        self.model = copy.deepcopy(bundle.model).double()

    def params(self, flat):
        return {f"{n}.weight": flat[self.offsets[i]:self.offsets[i + 1]].reshape(self.w0[i].shape)
                for i, n in enumerate(self.names)}

    def _batch(self, b):
        return {k: (v.double() if v.is_floating_point() else v) for k, v in b.items()}

    def loss(self, flat):
        out = 0.0
        for b in self.bundle.calibration:
            b = self._batch(b)
            logits = functional_call(self.model, self.params(flat), (b["x"],))
            out = out + self.bundle.batch_size(b) / self.total * self.bundle.output_loss(logits, b)
        return out

    def flat0(self):
        return torch.cat([w.reshape(-1) for w in self.w0])

    def hessian(self) -> torch.Tensor:
        return torch.autograd.functional.hessian(self.loss, self.flat0())

    def gauss_newton(self) -> torch.Tensor:
        """Σ_b share_b · J_bᵀ H_out,b J_b, formed densely."""
        g = 0.0
        for b in self.bundle.calibration:
            b = self._batch(b)

            def out(flat, b=b):
                return functional_call(self.model, self.params(flat), (b["x"],))

            o = out(self.flat0()).detach()
            j = torch.autograd.functional.jacobian(out, self.flat0()).reshape(o.numel(), -1)
            h_out = torch.autograd.functional.hessian(
                lambda z, b=b, shape=o.shape: self.bundle.output_loss(z.reshape(shape), b), o.reshape(-1))
            g = g + self.bundle.batch_size(b) / self.total * j.T @ h_out @ j
        return g

    def block(self, m: torch.Tensor, i: int, j: int | None = None) -> torch.Tensor:
        j = i if j is None else j
        return m[self.offsets[i]:self.offsets[i + 1], self.offsets[j]:self.offsets[j + 1]]
