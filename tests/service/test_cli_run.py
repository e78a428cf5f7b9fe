"""`bitalloc run`: the table and summary for people, JSON for pipelines, one-line errors."""

import json

import pytest
import torch

from kernels.artifact import load_artifact
from kernels.fake_quant import fake_quantize_model
from kernels.scheme import QuantConfig
from sensitivity.models.digits_cnn import DigitsCNN
from service.cli import main

FAST = ["--param", "tol=0.25", "--param", "min_probes=4", "--param", "max_probes=12"]


def test_run_prints_table_summary_and_writes_json(tmp_path, capsys, digits_bundle):
    out, artifact = tmp_path / "result.json", tmp_path / "artifact"
    code = main(
        [
            "run",
            "--model",
            "digits-cnn",
            "--budget",
            "avg_bits=4",
            "--method",
            "hawq_v2",
            "--json",
            str(out),
            "--artifact",
            str(artifact),
            *FAST,
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    for text in ("block.conv_a", "trace ± error", "average bits", "quality (accuracy, higher is better)",
                 "uniform 4-bit"):
        assert text in printed
    result = json.loads(out.read_text())
    assert result["summary"]["avg_bits"] <= 4 and len(result["layers"]) == 7
    # the artifact loads without the full-precision weights and runs at the chosen widths
    packed = load_artifact(artifact, DigitsCNN)
    configs = {layer["name"]: QuantConfig(layer["w_bits"]) for layer in result["layers"]}
    x = digits_bundle.calibration[0]["x"][:32]
    expected = fake_quantize_model(digits_bundle.model, configs)(x)
    torch.testing.assert_close(packed(x), expected, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "resnet9000", "--budget", "avg_bits=4"],
            "unknown model 'resnet9000'; built-in models: digits-cnn, digits-vit, minilm",
        ),
        (
            ["--model", "digits-cnn", "--budget", "avg_bits=4", "--method", "magic"],
            "unknown method 'magic'; methods:",
        ),
        (
            ["--model", "digits-cnn", "--budget", "colour=4"],
            "unknown budget 'colour'; budgets: avg_bits, size_bytes",
        ),
        (
            ["--model", "digits-cnn", "--budget", "avg_bits"],
            "malformed budget 'avg_bits': expected KIND=NUMBER",
        ),
        (["--model", "digits-cnn", "--budget", "avg_bits=four"], "budget 'avg_bits' needs a number"),
        (["--model", "digits-cnn", "--budget", "avg_bits=1.5"], "no allocation fits the budget"),
    ],
)
def test_bad_input_gives_one_line_error_and_nonzero_exit(args, message, capsys):
    code = main(["run", *args])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert message in err
    assert len(err.splitlines()) == 1
