"""The method registry: typed configs parsed once with clear errors, the params the
tables record, the manifest's description, and estimators that stand alone."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from sensitivity.estimators import get_estimator
from sensitivity.methods import (
    METHODS,
    HawqV2Config,
    InterlayerConfig,
    describe,
    method_names,
    parse_method_params,
)

TRACE_DEFAULTS = {"tol": 0.05, "min_probes": 8, "max_probes": 100, "seed": 0, "engine": "auto", "block": 0}


def test_methods_module_imports_no_torch():
    code = ("import sys\nimport sensitivity.methods, sensitivity.estimators\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr


def test_every_method_has_an_estimator_that_imports_no_other_estimator():
    assert method_names() == ["empirical", "fisher", "hawq_v1", "hawq_v2", "interlayer", "lrp"]
    estimator_modules = {m.module for m in METHODS.values()}
    for method in METHODS.values():
        assert callable(get_estimator(method.name))
        path = Path(__file__).resolve().parents[2] / (method.module.replace(".", "/") + ".py")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        assert not imported & (estimator_modules - {method.module}), method.name


@pytest.mark.parametrize("method, params, meta", [
    ("hawq_v2", {}, {"mode": "exact", **TRACE_DEFAULTS, "backend": "bitalloc"}),
    ("hawq_v2", {"tol": 0.2, "mode": "shared"}, {"mode": "shared", **TRACE_DEFAULTS, "tol": 0.2,
                                                 "backend": "bitalloc"}),
    ("fisher", {"engine": "gn_joint"}, {**TRACE_DEFAULTS, "engine": "gn_joint"}),
    ("hawq_v1", {"max_iter": 30}, {"tol": 1e-3, "max_iter": 30, "seed": 0, "backend": "bitalloc"}),
    ("empirical", {}, {}),
    ("lrp", {"eps": 1e-3}, {"rules": "auto", "eps": 1e-3, "attention": "attnlrp"}),
    ("interlayer", {"window": 1, "max_probes": 12},
     {"mode": "exact", **TRACE_DEFAULTS, "max_probes": 12, "backend": "bitalloc", "window": 1,
      "pairs": "hessian"}),
    ("interlayer", {"pairs": "measured"}, {"window": 2, "pairs": "measured"}),
])
def test_meta_params_are_the_full_settings_in_their_order(method, params, meta):
    got = parse_method_params(method, params).meta_params()
    assert got == meta and list(got) == list(meta)


@pytest.mark.parametrize("method, params, message", [
    ("hawq_v2", {"max_probes": "10"}, "hawq_v2: max_probes must be an integer >= 2, got '10'"),
    ("hawq_v2", {"max_probes": 10.0}, "hawq_v2: max_probes must be an integer >= 2, got 10.0"),
    ("hawq_v2", {"block": True}, "hawq_v2: block must be an integer >= 0, got True"),
    ("hawq_v2", {"tol": "0.1"}, "hawq_v2: tol must be in (0, 1), got '0.1'"),
    ("hawq_v2", {"engine": 3}, "hawq_v2: engine must be one of auto, hvp, jvp, gn, gn_joint; got 3"),
    ("hawq_v2", {"seed": 2**70}, "hawq_v2: seed must be an integer in [-2**63, 2**63)"),
    ("fisher", {"engine": "hvp"}, "fisher: engine must be one of auto, gn, gn_joint; got 'hvp'"),
    ("fisher", {"mode": "exact"}, "fisher: unknown parameter(s) mode; accepted: tol, min_probes"),
    ("hawq_v1", {"backend": "magic"}, "hawq_v1: backend must be one of bitalloc, pyhessian; got 'magic'"),
    ("empirical", {"tol": 0.1}, "empirical: unknown parameter(s) tol; accepted: none"),
    ("lrp", {"eps": float("nan")}, "lrp: eps must be a number > 0, got nan"),
    ("interlayer", {"window": 0, "tol": 3}, "interlayer: window must be an integer >= 1, got 0"),
    ("interlayer", {"pairs": "measured", "backend": "pyhessian"},
     "interlayer: with pairs='measured' every term is measured, so backend do not apply"),
    ("interlayer", {"mode": "shared", "backend": "pyhessian"},
     "interlayer: backend='pyhessian' computes exact per-layer traces; use mode='exact'"),
    ("magic", {}, "unknown method 'magic'; methods: empirical, fisher, hawq_v1, hawq_v2, interlayer, lrp"),
])
def test_bad_params_name_the_method_and_the_problem(method, params, message):
    with pytest.raises(ValueError) as err:
        parse_method_params(method, params)
    assert str(err.value).startswith(message), str(err.value)


def test_interlayer_config_holds_the_trace_settings_only_with_hessian_pairs():
    assert InterlayerConfig().hessian == HawqV2Config()
    assert InterlayerConfig(pairs="measured").hessian is None
    with pytest.raises(ValueError, match="no trace settings apply"):
        InterlayerConfig(pairs="measured", hessian=HawqV2Config())


def test_description_lists_every_parameter_with_type_default_and_allowed_values():
    entries = {d["name"]: d for d in describe()}
    assert list(entries) == method_names()
    for name, entry in entries.items():
        assert entry["summary"] and "\n" not in entry["summary"]
        config = METHODS[name].config
        for p in entry["parameters"]:
            assert p["type"] in ("integer", "number", "string"), p
            for value in p["allowed"] or [p["default"]]:  # every value it lists is accepted
                pairs = {"pairs": p["requires"]["pairs"]} if "requires" in p else {}
                config.from_params({**pairs, p["name"]: value})
        assert [p["name"] for p in entry["parameters"]] == config.accepted()
    hawq = {p["name"]: p for p in entries["hawq_v2"]["parameters"]}
    assert hawq["mode"] == {"name": "mode", "type": "string", "default": "exact",
                            "allowed": ["exact", "shared"]}
    assert hawq["tol"] == {"name": "tol", "type": "number", "default": 0.05, "allowed": None}
    inter = {p["name"]: p for p in entries["interlayer"]["parameters"]}
    assert inter["pairs"]["allowed"] == ["hessian", "measured"] and "requires" not in inter["pairs"]
    assert inter["tol"]["requires"] == {"pairs": "hessian"}
