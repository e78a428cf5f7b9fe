"""Curvature on causal LMs: the per-token output losses' H_out, and the per-sample
Gauss–Newton probe norms of Conv1D layers and of a tied embedding (whose gradient
sums the lookup and the LM head) against per-sample gradients by autograd."""

from __future__ import annotations

import llm_models
import pytest
import torch

from sensitivity.gauss_newton import OutputGraph
from sensitivity.layers import discover_layers
from sensitivity.output_loss import NextTokenCrossEntropyOutput, TokenDistillationKLOutput
from sensitivity.perturb import Perturbation, frozen


@pytest.mark.parametrize("build", [llm_models.gpt2, llm_models.llama])
def test_per_sample_probe_norms_match_autograd(build):
    model = build()
    bundle = llm_models.bundle(model)
    names = [layer.name for layer in discover_layers(bundle)]
    idx = list(range(len(names)))
    batch = bundle.calibration[0]
    pert = Perturbation(bundle, names)
    with frozen(model):
        graph = OutputGraph(pert, batch, idx)
        norms = graph.probe_norms(3, torch.Generator().manual_seed(5), idx)
    u = bundle.output_loss.probes(graph.output.detach(), batch, 3, torch.Generator().manual_seed(5))
    modules = dict(model.named_modules())
    weights = [modules[n].weight for n in names]
    out = bundle.forward(model, batch)
    want = torch.zeros(3, len(names), dtype=torch.float64)
    for p in range(3):
        for s in range(out.shape[0]):
            grads = torch.autograd.grad((out[s] * u[p, s]).sum(), weights, retain_graph=True,
                                        allow_unused=True)
            for c, g in enumerate(grads):
                if g is not None:
                    want[p, c] += g.double().pow(2).sum()
    # GPT-2's position embedding looks up (1, T) positions broadcast over the batch: its
    # probe norm keeps the cross-sample terms (still unbiased), so it is left out here
    keep = [c for c, n in enumerate(names) if not n.endswith("wpe")]
    torch.testing.assert_close(norms[:, keep], want[:, keep], rtol=1e-4, atol=1e-12)
    tied = names.index(next(n for n in names if "wte" in n or "embed_tokens" in n))
    assert pert.shape(tied) == tuple(weights[tied].shape)  # a tied embedding is perturbed whole


@pytest.mark.parametrize("loss", [TokenDistillationKLOutput(), NextTokenCrossEntropyOutput()])
def test_token_losses_know_their_output_hessian(loss):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    ids = torch.randint(0, 7, (2, 5))
    batch = {"attention_mask": mask, "labels": ids, "target": logits + 0.3 * torch.randn_like(logits)}
    # H_out by double autograd, as a dense (70 × 70) matrix
    flat = logits.reshape(-1).clone().requires_grad_(True)
    hess = torch.autograd.functional.hessian(lambda z: loss(z.reshape(2, 5, 7), batch), flat)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(4, 2, 5, 7, dtype=torch.float64)
    quad = loss.quadratic(logits, batch, v)  # (diag(p) − p pᵀ)/N whatever the KL's target
    want = torch.einsum("ki,ij,kj->k", v.reshape(4, -1), hess, v.reshape(4, -1))
    torch.testing.assert_close(quad, want)
    probes = loss.probes(logits, batch, 4000, gen).reshape(4000, -1)
    sample = probes.T @ probes / 4000
    assert (sample - hess).abs().max() < 0.05 * hess.abs().max()
    padded = hess.reshape(2, 5, 7, 2, 5, 7)[1, 3:]  # padded positions have no curvature
    assert padded.abs().max() == 0


@pytest.mark.parametrize("method", ["hawq_v1", "hawq_v2", "fisher", "empirical", "lrp", "interlayer"])
def test_every_method_runs_on_a_gpt2(method):
    from kernels.scheme import QuantScheme
    from sensitivity.engine import compute_table

    bundle = llm_models.bundle(llm_models.gpt2())  # built with SDPA: the bundle makes it eager
    assert bundle.model.config._attn_implementation == "eager"
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    table = compute_table(method, bundle, layers, [(2, 16), (4, 16), (16, 16)],
                          QuantScheme(group_size=16), {}, use_cache=False)
    assert set(table.omega) == {layer.name for layer in layers}
    c_attn = table.omega["transformer.h.0.attn.c_attn"]
    assert c_attn[(2, 16)] >= c_attn[(4, 16)] or method == "empirical"


def test_output_probe_block_fits_the_probe_memory(monkeypatch):
    """The gn engines' default block: 8 probes where the output is small, as many as
    PROBE_BYTES holds for the largest batch where it is not (an LLM's vocabulary)."""
    from sensitivity.estimators import hutchinson
    from sensitivity.estimators.context import weighted_batches

    bundle = llm_models.bundle(llm_models.llama())
    names = [layer.name for layer in discover_layers(bundle)]
    engine = hutchinson.GaussNewtonEngine(Perturbation(bundle, names), single_batch=False)
    batches = weighted_batches(bundle)
    with torch.no_grad():
        out = bundle.forward(bundle.model, batches[0].batch)
    largest = max(bundle.batch_size(wb.batch) for wb in batches)
    probe = 4 * out.numel() / bundle.batch_size(batches[0].batch) * largest
    assert engine.block(batches) == 8
    monkeypatch.setattr(hutchinson, "PROBE_BYTES", int(3.5 * probe))
    assert engine.block(batches) == 3
    monkeypatch.setattr(hutchinson, "PROBE_BYTES", 1)
    assert engine.block(batches) == 1


def _whole_token_probes(logits, weight, k, gen):
    """The token probes drawn with whole-tensor softmax, square root and signs (before
    they were drawn a slice of positions at a time)."""
    import torch.nn.functional as F

    p = F.softmax(logits.detach().float(), -1).to(logits.dtype)
    sp = p.sqrt()
    scale = weight.sqrt().unsqueeze(-1).to(logits.dtype)
    out = torch.empty((k, *logits.shape), dtype=logits.dtype)
    r = torch.empty(logits.shape, dtype=logits.dtype)
    for j in range(k):
        r.random_(0, 2, generator=gen).mul_(2).sub_(1)
        r.mul_(sp)
        torch.mul(p, r.sum(-1, keepdim=True), out=out[j])
        torch.sub(r, out[j], out=out[j])
        out[j].mul_(scale)
    return out


@pytest.mark.parametrize("shape", [(2, 17, 300), (1, 33, 40000), (3, 1, 50), (1, 16, 64)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_probes_in_slices_are_the_whole_tensor_ones(shape, threads, dtype):
    from sensitivity.output_loss import _position_weights, _token_probes

    torch.manual_seed(0)
    logits = 3 * torch.randn(shape, dtype=dtype)
    mask = torch.ones(shape[:2], dtype=torch.long)
    mask[-1, shape[1] // 2:] = 0
    weight = _position_weights(mask)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = _token_probes(logits, weight, 3, torch.Generator().manual_seed(7))
        want = _whole_token_probes(logits, weight, 3, torch.Generator().manual_seed(7))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, want)
