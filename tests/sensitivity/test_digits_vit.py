"""digits-vit: trains from scratch (fixed seed, own cache folder) past 90% test
accuracy, reloads from its cache, and exposes every projection as a layer."""

import pytest
import torch

from sensitivity.layers import discover_layers
from sensitivity.models import load_model, model_names


@pytest.fixture(scope="module")
def fresh_vit(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("BITALLOC_CACHE", str(tmp_path_factory.mktemp("vit-cache")))
    try:
        bundle = load_model("digits-vit")  # empty cache: trains here
        yield bundle, load_model("digits-vit")  # second load: from the cached safetensors
    finally:
        mp.undo()


def test_registered():
    assert "digits-vit" in model_names()


def test_trains_past_90_percent_and_reloads_from_cache(fresh_vit):
    trained, cached = fresh_vit
    assert trained.info["test_accuracy"] > 90
    assert cached.info["test_accuracy"] == trained.info["test_accuracy"]
    quality = cached.evaluate(cached.model)
    assert quality["accuracy"] == pytest.approx(trained.info["test_accuracy"])
    assert quality["test_loss"] > 0 and cached.quality_metric == "accuracy"


def test_layers_are_discovered(fresh_vit):
    bundle, _ = fresh_vit
    layers = {layer.name: layer for layer in discover_layers(bundle)}
    per_block = ["attn.q", "attn.k", "attn.v", "attn.proj", "fc1", "fc2"]
    expected = ["patch_embed"] + [f"blocks.{i}.{n}" for i in range(2) for n in per_block] + ["head"]
    assert list(layers) == expected
    assert all(layer.used and layer.kind == "linear" for layer in layers.values())
    assert layers["patch_embed"].shape == (64, 4) and layers["patch_embed"].macs == 16 * 4 * 64
    assert layers["blocks.0.fc1"].macs == 16 * 64 * 128 and layers["head"].macs == 64 * 10


def test_loss_has_second_order_gradients(fresh_vit):
    """Eager attention: a Hessian-vector product goes through the softmax."""
    bundle, _ = fresh_vit
    w = dict(bundle.model.named_modules())["blocks.1.attn.q"].weight
    loss = bundle.loss(bundle.model, bundle.calibration[0])
    (g,) = torch.autograd.grad(loss, [w], create_graph=True)
    (hv,) = torch.autograd.grad((g * torch.ones_like(w)).sum(), [w])
    assert torch.isfinite(hv).all() and hv.abs().sum() > 0
