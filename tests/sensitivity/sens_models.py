"""Tiny bundles whose full Hessian a test can form densely."""

from __future__ import annotations

import torch
from torch import nn

from sensitivity.bundle import ModelBundle
from sensitivity.metrics import Metric
from sensitivity.output_loss import CrossEntropyOutput, SquaredErrorOutput


def _bundle(name, model, batches, output_loss) -> ModelBundle:
    def output(m, b):
        return m(b["x"])

    return ModelBundle(
        name=name, model=model, calibration=batches, forward=output,
        loss=lambda m, b: output_loss(output(m, b), b), evaluate=lambda m: {},
        metrics=[Metric("none", higher_is_better=True)], output_loss=output_loss, inputs=lambda b: (b["x"],),
    )


def tiny_mlp(bias: bool = True, act=nn.Tanh) -> ModelBundle:
    """6 → 8 → 5 → 3 classifier, cross-entropy, two calibration batches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=bias), act(), nn.Linear(8, 5, bias=bias), act(),
                          nn.Linear(5, 3, bias=bias))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return _bundle("tiny-mlp", model.eval(), [{"x": x[:20], "y": y[:20]}, {"x": x[20:], "y": y[20:]}],
                   CrossEntropyOutput("y"))


def tiny_distill_mlp() -> ModelBundle:
    """A 4 → 6 → 3 embedding model with a zero-residual self-distillation loss."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    x = torch.randn(24, 4)
    with torch.no_grad():
        target = model(x)
    return _bundle("tiny-distill", model, [{"x": x, "target": target}], SquaredErrorOutput("target"))


class TinyCNN(nn.Module):
    def __init__(self, bias: bool = True, bn: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=bias)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 3, bias=bias)

    def forward(self, x):
        x = self.relu(self.bn(self.conv1(x)))
        return self.fc(self.flatten(self.pool(self.relu2(self.conv2(x)))))


def tiny_cnn(bias: bool = True, bn: bool = True) -> ModelBundle:
    torch.manual_seed(2)
    model = TinyCNN(bias, bn)
    if bn:
        with torch.no_grad():
            model.bn.running_mean.uniform_(-0.2, 0.2)
            model.bn.running_var.uniform_(0.5, 1.5)
            model.bn.weight.uniform_(0.5, 1.5)
    x, y = torch.rand(16, 1, 6, 6), torch.randint(0, 3, (16,))
    return _bundle("tiny-cnn", model.eval(), [{"x": x, "y": y}], CrossEntropyOutput("y"))
