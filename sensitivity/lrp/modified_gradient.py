"""LRP as a modified gradient (AttnLRP, Achtibat et al., ICML 2024): relevance at a
tensor h is h ⊙ ∂̃f/∂h, where ∂̃ is the gradient with the rules below installed.
f is the bundle's output relevance (`output_loss.relevance`): the true class logit
for classifiers, the dot product with the full-precision output for embeddings,
the logit of the full-precision top token for language models.

The forward pass runs with the parameters frozen and the model's inputs (its
floating-point arguments, every `nn.Embedding` output) as the leaves of the
graph, so "requires grad" means "depends on the input"; a `TorchFunctionMode`
(thread-local, active only inside that forward) applies the rules by operation,
whatever module calls it:

- epsilon rule on affine maps with a constant weight (`F.linear`: `nn.Linear`;
  `torch.addmm`: transformers' `Conv1D` (GPT-2), weight stored (in, out);
  `F.conv1d/2d/3d`): the gradient at the output z is scaled by z / (z + ε·sign z),
  i.e. R_x = x ⊙ Wᵀ(R_z / (z + ε·sign z));
- uniform rule on products of two input-dependent tensors (`matmul`/`@`, `bmm`,
  `mul`/`*`, `einsum`, and `addmm`/`baddbmm` when both factors are: the attention
  products Q·Kᵀ and A·V, the SwiGLU gate × up):
  each of the m input-dependent operands gets the gradient divided by m, so each
  receives 1/m of the product's relevance (the relevance is conserved; plain
  gradient × input would count it m times);
- softmax: AttnLRP's rule R_x = x ⊙ (R_y − y ⊙ Σ R_y) (their Proposition 3.1), which
  in this framework is exactly the plain gradient (R_y = y ⊙ g), so softmax is left
  alone; it is not conservative (the rule drops the bias term of softmax's Taylor
  expansion). `attention="constant"` detaches softmax instead (CP-LRP, Ali et al.
  2022): attention weights held constant, Q and K get no relevance;
- `F.scaled_dot_product_attention` (fused: its products are invisible to the mode)
  is computed written out (Q·Kᵀ, mask, softmax, A·V) with the rules above;
- identity rule on elementwise nonlinearities (functional `gelu`, `silu`, `relu`,
  `sigmoid`, `tanh`, …, and activation modules, including transformers' composite
  ones such as `NewGELUActivation`): y = x · (act(x)/x) with the slope detached, so
  R_x = R_y;
- LayerNorm (`F.layer_norm`) with its standard deviation detached (centering
  kept), RMSNorm (`F.rms_norm`, and modules whose class name ends in `RMSNorm`:
  Llama's, Qwen2's, …) with its root mean square detached: linear maps, so the
  relevance passes through (their biases take a share);
- `F.normalize` with its norm detached (sentence-embedding heads);
- rotary position embeddings multiply q and k by cos/sin tables that do not depend
  on the input: linear in q/k, the plain gradient is the rule.

Rules that conserve (Σ R_in = Σ R_out): uniform, identity, the normalisations
without bias, rotary; the epsilon rule conserves up to ε and the bias share.
`nn.MultiheadAttention` is a fused torch function the mode cannot see into: a
model with one is refused.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.lrp.relevance import LayerRelevance, totals
from sensitivity.methods import LRP_ATTENTION
from sensitivity.perturb import frozen

ATTENTION_RULES = LRP_ATTENTION  # attnlrp: AttnLRP softmax rule; constant: CP-LRP
ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Mish,
               nn.Hardswish, nn.Softplus)


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


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by `factor` on the way back."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def identity_rule(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y as x times its detached elementwise slope y/x (0 where x is 0): R_x = R_y."""
    nonzero = x.abs() > 1e-12
    slope = torch.where(nonzero, y / torch.where(nonzero, x, torch.ones_like(x)), torch.zeros_like(y))
    return x * slope.detach()


def _depends(t) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


def _uniform(tensors: Sequence) -> list:
    """Tensors with the gradient of each input-dependent one divided by their count."""
    m = sum(_depends(t) for t in tensors)
    if m < 2:
        return list(tensors)
    return [_ScaleGradient.apply(t, 1.0 / m) if _depends(t) else t for t in tensors]


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dims, keepdim=True)
    std = (x.var(dims, unbiased=False, keepdim=True) + eps).sqrt().detach()
    y = (x - mean) / std
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    dims = tuple(range(-len(normalized_shape), 0))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x / (x.pow(2).mean(dims, keepdim=True) + eps).sqrt().detach()
    return y * weight if weight is not None else y


def _normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    return x / x.norm(p, dim, keepdim=True).clamp_min(eps).detach()


def _arg(args, kwargs, i, name, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


_FUNCTIONAL_ACTIVATIONS = {F.gelu, F.silu, F.relu, torch.relu, torch.Tensor.relu, torch.sigmoid,
                           torch.Tensor.sigmoid, torch.tanh, torch.Tensor.tanh, F.leaky_relu,
                           F.elu, F.mish, F.hardswish, F.softplus}
_PRODUCTS = {torch.matmul, torch.Tensor.matmul, torch.bmm, torch.Tensor.bmm, torch.mul,
             torch.Tensor.mul}
_SOFTMAX = {F.softmax, torch.softmax, torch.Tensor.softmax}
_AFFINE = {F.linear: (0, 1), torch.addmm: (1, 2), torch.baddbmm: (1, 2), F.conv1d: (0, 1), F.conv2d: (0, 1),
           F.conv3d: (0, 1)}  # positions of (input, weight)


class AttnLRPMode(TorchFunctionMode):
    """The rules of the module docstring, by operation. Inside `__torch_function__`
    the mode is off, so the rules' own operations are plain."""

    def __init__(self, eps: float, attention: str = "attnlrp"):
        super().__init__()
        if attention not in ATTENTION_RULES:
            raise ValueError(f"lrp: attention must be one of {', '.join(ATTENTION_RULES)}; got {attention!r}")
        self.eps, self.attention = eps, attention

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PRODUCTS:
            a, b = _uniform(args[:2])
            return func(a, b, *args[2:], **kwargs)
        if func is torch.einsum:
            operands = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
            return func(args[0], *_uniform(operands))
        if func in _AFFINE:
            i, w = _AFFINE[func]
            args = list(args)
            if len(args) > w and _depends(args[w]):  # a weight that depends on the input: bilinear
                args[i], args[w] = _uniform([args[i], args[w]])
            out = func(*args, **kwargs)
            return _Epsilon.apply(out, self.eps) if _depends(out) else out
        if func in _SOFTMAX:
            out = func(*args, **kwargs)
            return out.detach() if self.attention == "constant" else out
        if func is F.scaled_dot_product_attention:
            return self._attention(*args, **kwargs)
        if func in _FUNCTIONAL_ACTIVATIONS:
            out = func(*args, **kwargs)
            return identity_rule(args[0], out) if _depends(args[0]) and _depends(out) else out
        if func is F.layer_norm:
            return _layer_norm(*args, **kwargs)
        if func is F.rms_norm:
            return _rms_norm(*args, **kwargs)
        if func is F.normalize:
            return _normalize(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            raise ValueError("lrp: nn.MultiheadAttention is a fused function the AttnLRP rules cannot "
                             "reach into; write the attention out (matmul, softmax) or use "
                             "scaled_dot_product_attention")
        return func(*args, **kwargs)

    def _attention(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
        """scaled_dot_product_attention written out with the rules (dropout must be off)."""
        if dropout_p:
            raise ValueError(f"lrp: attention dropout must be off (dropout_p={dropout_p}); "
                             "put the model in eval mode")
        scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
        if enable_gqa and k.size(-3) != q.size(-3):
            k = k.repeat_interleave(q.size(-3) // k.size(-3), -3)
            v = v.repeat_interleave(q.size(-3) // v.size(-3), -3)
        scores = torch.matmul(*_uniform([q, k.transpose(-2, -1)])) * scale
        low = torch.finfo(scores.dtype).min  # not -inf: a fully masked row stays finite
        if is_causal:
            keep = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~keep, low)
        if attn_mask is not None:
            scores = (scores.masked_fill(~attn_mask, low) if attn_mask.dtype == torch.bool
                      else scores + attn_mask)
        weights = torch.softmax(scores, dim=-1)
        if self.attention == "constant":
            weights = weights.detach()
        return torch.matmul(*_uniform([weights, v]))


def _is_activation(m: nn.Module) -> bool:
    return isinstance(m, ACTIVATIONS) or type(m).__module__ == "transformers.activations"


def _is_rms_norm(m: nn.Module) -> bool:
    return type(m).__name__.endswith("RMSNorm")


def _slope_hook(module, args, out):
    """Activations and RMSNorms: identity rule (an RMSNorm is x times w / rms(x))."""
    x = args[0]
    if not (_depends(x) and isinstance(out, torch.Tensor) and out.shape == x.shape):
        return out
    return identity_rule(x, out)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """A new leaf of the relevance graph (cloned: the model may change it in place)."""
    return t.detach().requires_grad_(True).clone()


def _leaf_hook(module, args, out):
    """An embedding's output starts the graph (its input is integer)."""
    return _leaf(out)


def _input_leaves(module, args, kwargs):
    """The model's floating-point arguments start the graph."""
    leaf = lambda t: _leaf(t) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return tuple(leaf(a) for a in args), {k: leaf(v) for k, v in kwargs.items()}


def _capture_hook(name, store, module, args, out):
    store[name] = out
    return out


@contextlib.contextmanager
def modified_gradient(model: nn.Module, eps: float, capture: Sequence[str], store: dict,
                      attention: str = "attnlrp"):
    """Install the rules on `model` for the forward passes inside (parameters frozen,
    inputs as leaves); outputs of the `capture` modules land in `store`."""
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        raise ValueError("lrp: nn.MultiheadAttention is a fused function the AttnLRP rules cannot "
                         "reach into; write the attention out (matmul, softmax)")
    mode = AttnLRPMode(eps, attention)
    handles = [model.register_forward_pre_hook(_input_leaves, with_kwargs=True)]
    try:
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                handles.append(m.register_forward_hook(_leaf_hook))
            elif _is_activation(m) or _is_rms_norm(m):
                handles.append(m.register_forward_hook(_slope_hook))
        modules = dict(model.named_modules())
        for name in capture:  # registered last: sees the rule-modified output
            handles.append(modules[name].register_forward_hook(partial(_capture_hook, name, store)))
        with frozen(model), mode:
            yield
    finally:
        for h in handles:
            h.remove()


def batch_relevance(bundle: ModelBundle, batch: Batch, names: Sequence[str], eps: float,
                    attention: str = "attnlrp") -> LayerRelevance:
    """Relevance totals at the output of each named layer for one calibration batch."""
    bundle.require_output_loss("lrp")
    store: dict[str, torch.Tensor] = {}
    with torch.enable_grad():
        with modified_gradient(bundle.model, eps, names, store, attention):
            out = bundle.forward(bundle.model, batch)
        f = bundle.output_loss.relevance(out, batch)
        missing = [n for n in names if n not in store or not _depends(store[n])]
        if missing:
            raise ValueError(f"lrp: no gradient path from the input through {', '.join(missing)} "
                             "to the output")
        if not f.requires_grad:
            raise ValueError("lrp: the output relevance does not depend on the input")
        grads = torch.autograd.grad(f, [store[n] for n in names], allow_unused=True)
    rel = {n: (store[n] * g).detach() if g is not None else torch.zeros(())
           for n, g in zip(names, grads)}
    signed, absolute = totals(rel)
    return LayerRelevance(float(f.detach()), signed, absolute)
