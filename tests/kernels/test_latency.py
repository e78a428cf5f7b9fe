"""The per-layer latency table the solver's latency_ms budget reads."""

import json

import pytest

from kernels.latency import choice_key, measure_latency_table, record_input_shapes


def test_table_for_every_layer_and_width(device, digits_bundle):
    model = digits_bundle.model
    names = ["block.conv_a", "fc1", "fc2"]
    x = digits_bundle.calibration[0]["x"][:2]
    shapes = record_input_shapes(model, names, lambda: model(x))
    assert shapes["block.conv_a"] == (16, 8, 8) and shapes["fc1"] == (64,)
    layers = [(name, model.get_submodule(name)) for name in names]
    table = measure_latency_table(model, layers, [2, 4, 16], batch_rows=4, device=device,
                                  input_shapes=shapes, warmup=1, repeats=3)
    assert set(table) == set(names)
    for row in table.values():
        assert set(row) == {"w2a16", "w4a16", "w16a16"}
        assert all(ms > 0 for ms in row.values())
    assert json.loads(json.dumps(table)) == table


def test_embedding_layers_need_no_input_shape(minilm_bundle):
    model = minilm_bundle.model
    layer = ("embeddings.word_embeddings", model.embeddings.word_embeddings)
    table = measure_latency_table(model, [layer], [4], batch_rows=8, device="cpu",
                                  warmup=0, repeats=1)
    assert table["embeddings.word_embeddings"]["w4a16"] > 0


def test_errors(digits_bundle):
    model = digits_bundle.model
    conv = [("block.conv_a", model.block.conv_a)]
    with pytest.raises(ValueError, match="input_shapes"):
        measure_latency_table(model, conv, [4], batch_rows=1, device="cpu")
    with pytest.raises(ValueError, match="not a module of the model"):
        import torch

        measure_latency_table(model, [("x", torch.nn.Linear(2, 2))], [4], 1, "cpu")
    with pytest.raises(ValueError, match="never called"):
        record_input_shapes(model, ["fc1"], lambda: None)
    assert choice_key(3) == "w3a16"
