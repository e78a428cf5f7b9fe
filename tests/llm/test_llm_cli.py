"""`bitalloc run --gguf FILE`: a GGUF causal LM run locally end to end; a file
that is not GGUF, or --gguf beside another model source, is a usage error."""

from __future__ import annotations

import json

import llm_models
import pytest

from service.cli import main
from service.cli.exit_codes import BAD_REQUEST, OK

CHEAP = ["--method", "fisher", "--budget", "avg_bits=4", "--param", "max_probes=16"]
pytestmark = pytest.mark.usefixtures("single_thread")


def test_run_a_gguf_file(tmp_path, capsys):
    path = llm_models.write_gguf(llm_models.llama(), llm_models.tokenizer(), tmp_path / "tiny.gguf")
    out = tmp_path / "result.json"
    code = main(["run", "--gguf", str(path), "--json", str(out), *CHEAP])
    printed = capsys.readouterr()
    assert code == OK, printed.err
    assert "perplexity" in printed.out and "tiny: uploaded GGUF" in printed.out
    result = json.loads(out.read_text())
    assert result["model"]["name"] == "tiny" and result["quality"]["metric"] == "perplexity"
    assert result["model"]["sequence_length"] == 64


def test_gguf_usage_errors(tmp_path, capsys):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    assert main(["run", "--gguf", str(fake), *CHEAP]) == BAD_REQUEST
    assert "not a GGUF file" in capsys.readouterr().err
    assert main(["run", "--gguf", str(fake), "--model-dir", str(tmp_path), *CHEAP]) == BAD_REQUEST
    assert "one of --weights" in capsys.readouterr().err
