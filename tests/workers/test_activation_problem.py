"""The problem builder over joint (w_bits, a_bits) choices: the widths each layer's input
may take (job-wide, per layer, 16 only for embeddings and layers left at 16), pins that fix
w_bits and leave a_bits to the solver, ties, and BOPs with both widths."""

import pytest
import torch
from torch import nn

from kernels.scheme import QuantScheme
from sensitivity.bundle import ModelBundle
from sensitivity.layers import discover_layers
from sensitivity.metrics import Metric
from solver import solve
from workers.problem import JobError, activation_widths, build_problem, candidate_choices, check_overrides
from workers.spec import JobSpec


class EmbedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.emb(ids).mean(1))))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = EmbedNet().eval()
    ids, y = torch.randint(0, 10, (6, 5)), torch.randint(0, 3, (6,))
    bundle = ModelBundle(name="embed-net", model=model, calibration=[{"ids": ids, "y": y}],
                         forward=lambda m, b: m(b["ids"]),
                         loss=lambda m, b: nn.functional.cross_entropy(m(b["ids"]), b["y"]),
                         evaluate=lambda m: {}, metrics=[Metric("none", True)])
    return bundle, discover_layers(bundle)


def spec(**kw):
    return JobSpec.model_validate({"model": "embed-net", "method": "fisher",
                                   "budgets": {"avg_bits": 8}, **kw})


def test_joint_choices_and_the_widths_each_input_takes(tiny):
    bundle, layers = tiny
    s = spec(weight_bits=[4, 8], activation_bits=[4, 8],
             overrides={"activation_bits": {"fc2": [8, 16]}, "exclude": []})
    assert candidate_choices(s) == [(w, a) for w in (4, 8, 16) for a in (4, 8, 16)]
    widths = activation_widths(s, bundle, layers)
    assert widths == {"emb": [16], "fc1": [4, 8], "fc2": [8, 16]}  # ids are not quantized
    problem = build_problem(s, bundle, layers, None, QuantScheme())
    options = {layer.name: set(layer.options) for layer in problem.layers}
    assert options["emb"] == {(4, 16), (8, 16)}
    assert options["fc1"] == {(w, a) for w in (4, 8) for a in (4, 8)}
    # BOPs count both widths
    fc1 = next(layer for layer in problem.layers if layer.name == "fc1")
    macs = next(layer.macs for layer in layers if layer.name == "fc1")
    assert fc1.options[(4, 8)].costs["bops"] == macs * 4 * 8
    assert activation_widths(spec(activation_bits=[4], overrides={"exclude": ["fc1"]}),
                             bundle, layers)["fc1"] == [16]


def test_pins_fix_weight_bits_and_leave_activation_bits_free(tiny):
    bundle, layers = tiny
    s = spec(weight_bits=[4, 8], activation_bits=[4, 8, 16], overrides={"pins": {"fc1": 4}})
    omega = {layer.name: {(w, a): (16 - w) + (16 - a) * 0.1 for w in (4, 8, 16) for a in (4, 8, 16)}
             for layer in layers}
    problem = build_problem(s, bundle, layers, omega, QuantScheme())
    assert "fc1" not in problem.pins and problem.allowed["fc1"] == {(4, 4), (4, 8), (4, 16)}
    allocation = solve(problem)
    assert allocation.choices["fc1"] == (4, 16)  # the pin's width, the best input width
    single = build_problem(spec(weight_bits=[4, 8], activation_bits=[8], overrides={"pins": {"fc1": 4}}),
                           bundle, layers, None, QuantScheme())
    assert single.pins["fc1"] == (4, 8)


def test_tied_layers_share_input_widths_they_all_allow(tiny):
    bundle, layers = tiny
    tied = [layer.__class__(**{**layer.__dict__, "group": "g"}) if layer.name in ("emb", "fc1") else layer
            for layer in layers]
    widths = activation_widths(spec(activation_bits=[4, 8]), bundle, tied)
    assert widths["emb"] == widths["fc1"] == [16]  # nothing in common: left at 16


def test_activation_overrides_are_checked(tiny):
    _, layers = tiny
    with pytest.raises(JobError, match="unknown layers in overrides: nope"):
        check_overrides(spec(overrides={"activation_bits": {"nope": [8]}}), layers)
    with pytest.raises(JobError, match="token ids"):
        check_overrides(spec(overrides={"activation_bits": {"emb": [8]}}), layers)
