"""Layer discovery on the built-in models."""

from sensitivity.layers import discover_layers


def test_digits_cnn_layers_params_macs_and_ties(digits_bundle):
    layers = {layer.name: layer for layer in discover_layers(digits_bundle)}
    assert list(layers) == ["stem.0", "block.conv_a", "block.conv_b", "block.downsample.0",
                            "conv.0", "fc1", "fc2"]
    assert layers["stem.0"].params == 16 * 9 and layers["stem.0"].macs == 16 * 9 * 8 * 8
    assert layers["block.conv_a"].macs == 32 * 16 * 9 * 4 * 4  # stride 2: 4×4 outputs
    assert layers["fc2"].macs == 64 * 10 and layers["fc2"].kind == "linear"
    assert layers["block.conv_b"].group == layers["block.downsample.0"].group == "block.conv_b"
    assert layers["fc1"].group is None
    assert all(layer.used for layer in layers.values())


def test_digits_cnn_is_trained(digits_bundle):
    assert digits_bundle.info["test_accuracy"] > 95


def test_minilm_reports_unused_pooler_and_counts_embeddings(minilm_bundle):
    layers = {layer.name: layer for layer in discover_layers(minilm_bundle)}
    assert not layers["pooler.dense"].used
    assert sum(1 for layer in layers.values() if layer.used) == 3 + 6 * 6
    emb = layers["embeddings.word_embeddings"]
    assert emb.kind == "embedding" and emb.macs == 0 and emb.shape == (30522, 384)
    query = layers["encoder.layer.0.attention.self.query"]
    tokens = int(minilm_bundle.calibration[0]["input_ids"].shape[1])
    assert query.macs == tokens * 384 * 384  # per sample, over the padded sequence


def test_minilm_quality_is_measured(minilm_bundle):
    quality = minilm_bundle.evaluate(minilm_bundle.model)
    assert quality["cosine_to_fp"] == 100.0 or abs(quality["cosine_to_fp"] - 100) < 1e-3
    assert quality["paraphrase_recall_at_1"] > 70  # the pretrained encoder finds paraphrases


def test_hf_kernels_package_is_not_mistaken_for_ours(minilm_bundle):
    from transformers.utils.import_utils import is_kernels_available

    assert not is_kernels_available()
