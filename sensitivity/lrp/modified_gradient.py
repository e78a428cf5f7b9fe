"""LRP as a modified gradient (AttnLRP-style rules): relevance at a tensor h is
h ⊙ ∂̃f/∂h, where ∂̃ is the gradient with

- the epsilon rule on every `nn.Linear`: the gradient through its output z is
  scaled by z / (z + ε·sign z) (R_x = x ⊙ Wᵀ(R_z / (z + ε)));
- LayerNorm as a linear map: its standard deviation detached (centering kept);
- elementwise nonlinearities (GELU, SiLU, Tanh, Sigmoid, ReLU) as identity with a
  detached slope: y = x · (act(x)/x), so R_x = R_y;
- softmax attention weights held constant (`F.softmax` detached), so relevance
  flows to the values only, and the query/key projections receive none;
- `F.normalize` with its norm detached (sentence-embedding heads).

f is the bundle's output relevance (`output_loss.relevance`): the true class logit
for classifiers, the dot product with the full-precision output for embeddings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.lrp.relevance import LayerRelevance, totals

ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ReLU)


class _Epsilon(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, eps):
        ctx.save_for_backward(z)
        ctx.eps = eps
        return z.clone()

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        return g * z / (z + ctx.eps * sign), None


def _is_activation(m: nn.Module) -> bool:
    return isinstance(m, ACTIVATIONS) or type(m).__name__.endswith(("GELUActivation", "SiLUActivation"))


def _linear_hook(eps, module, args, out):
    return _Epsilon.apply(out, eps)


def _layernorm_hook(module: nn.LayerNorm, args, out):
    x = args[0]
    dims = tuple(range(-len(module.normalized_shape), 0))
    mean = x.mean(dims, keepdim=True)
    std = (x.var(dims, unbiased=False, keepdim=True) + module.eps).sqrt().detach()
    y = (x - mean) / std
    if module.weight is not None:
        y = y * module.weight
    if module.bias is not None:
        y = y + module.bias
    return y


def _activation_hook(module, args, out):
    x = args[0]
    safe = torch.where(x.abs() > 1e-12, x, torch.ones_like(x))
    slope = torch.where(x.abs() > 1e-12, out / safe, torch.zeros_like(x)).detach()
    return x * slope


def _capture_hook(name, store, module, args, out):
    store[name] = out
    return out


def _detached_softmax(orig, *args, **kwargs):
    return orig(*args, **kwargs).detach()


def _normalize_detached_norm(x, p=2.0, dim=1, eps=1e-12, out=None):
    return x / x.norm(p, dim, keepdim=True).clamp_min(eps).detach()


@contextlib.contextmanager
def modified_gradient(model: nn.Module, eps: float, capture: Sequence[str], store: dict):
    """Install the rules on `model`; outputs of the `capture` modules land in `store`."""
    handles = []
    orig_softmax, orig_normalize = F.softmax, F.normalize
    try:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                handles.append(m.register_forward_hook(partial(_linear_hook, eps)))
            elif isinstance(m, nn.LayerNorm):
                handles.append(m.register_forward_hook(_layernorm_hook))
            elif _is_activation(m):
                handles.append(m.register_forward_hook(_activation_hook))
        modules = dict(model.named_modules())
        for name in capture:  # registered last: sees the rule-modified output
            handles.append(modules[name].register_forward_hook(partial(_capture_hook, name, store)))
        F.softmax = partial(_detached_softmax, orig_softmax)
        F.normalize = _normalize_detached_norm
        yield
    finally:
        F.softmax, F.normalize = orig_softmax, orig_normalize
        for h in handles:
            h.remove()


def batch_relevance(bundle: ModelBundle, batch: Batch, names: Sequence[str], eps: float) -> LayerRelevance:
    """Relevance totals at the output of each named layer for one calibration batch."""
    bundle.require_output_loss("lrp")
    store: dict[str, torch.Tensor] = {}
    with torch.enable_grad(), modified_gradient(bundle.model, eps, names, store):
        out = bundle.forward(bundle.model, batch)
        f = bundle.output_loss.relevance(out, batch)
        missing = [n for n in names if n not in store or not store[n].requires_grad]
        if missing:
            raise ValueError(f"lrp: no gradient path to the output from {', '.join(missing)}")
        grads = torch.autograd.grad(f, [store[n] for n in names], allow_unused=True)
    rel = {n: (store[n] * g).detach() if g is not None else torch.zeros(())
           for n, g in zip(names, grads)}
    signed, absolute = totals(rel)
    return LayerRelevance(float(f.detach()), signed, absolute)
