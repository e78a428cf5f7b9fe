"""`bitalloc run` with activation widths: the spec it builds, the w/a column of the report,
and a bad width as a one-line usage error."""

import json

from service.cli import main, make_parser
from service.cli.local import build_spec

FAST = ["--param", "tol=0.25", "--param", "min_probes=4", "--param", "max_probes=12"]


def _args(*extra):
    return make_parser().parse_args(["run", "--model", "digits-cnn", "--budget", "bops=2e7", *extra])


def test_build_spec_reads_the_activation_options():
    spec = build_spec(_args("--activation-bits", "4,8,16", "--activation-range", "mse",
                            "--activation-symmetric"))
    assert spec.activation_bits == [4, 8, 16]
    assert spec.quant.activation.range == "mse" and spec.quant.activation.symmetric
    assert build_spec(_args()).activation_bits == [16]


def test_run_with_activation_bits_prints_w_a(tmp_path, capsys, digits_bundle):
    out = tmp_path / "result.json"
    code = main(["run", "--model", "digits-cnn", "--budget", "bops=2e7", "--activation-bits", "4,8,16",
                 "--json", str(out), *FAST])
    printed = capsys.readouterr().out
    assert code == 0 and " w/a " in printed and "uniform W8A8: accuracy" in printed
    result = json.loads(out.read_text())
    assert any(layer["a_bits"] < 16 for layer in result["layers"])
    layer = result["layers"][0]
    assert f"{layer['w_bits']}/{layer['a_bits']}" in printed


def test_bad_activation_width_is_a_usage_error(capsys):
    assert main(["run", "--model", "digits-cnn", "--budget", "bops=2e7", "--activation-bits", "5"]) != 0
    err = capsys.readouterr().err
    assert "activation bits must be one of [4, 6, 8, 16]" in err
