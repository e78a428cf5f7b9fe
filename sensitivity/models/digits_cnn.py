"""`digits-cnn`: a small CNN with BatchNorm and a residual block, trained at first
use on scikit-learn's bundled 8×8 digits with a fixed seed and cached on disk."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save
from torch import nn

from sensitivity.bundle import ModelBundle
from sensitivity.data.digits import DigitsSplit, load_digits_split
from sensitivity.losses import task_loss
from sensitivity.output_loss import CrossEntropyOutput
from sensitivity.paths import atomic_write_bytes, cache_dir

VERSION = 1  # bump when the architecture or training recipe changes
SEED = 0
EPOCHS = 40
CALIBRATION_SAMPLES = 256


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with a strided 1×1 downsample on the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
        )
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        return self.relu(out + self.downsample(x))


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.block = ResidualBlock(16, 32, stride=2)
        self.conv = nn.Sequential(
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 64)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(self.conv(self.block(self.stem(x))))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


def _train(data: DigitsSplit) -> DigitsCNN:
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    n = data.x_train.shape[0]
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(n, generator=gen).split(64):
            opt.zero_grad()
            task_loss(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def _trained_model(data: DigitsSplit) -> DigitsCNN:
    path = cache_dir("models") / f"digits-cnn-v{VERSION}.safetensors"
    if path.exists():
        model = DigitsCNN()
        model.load_state_dict(load_file(path))
        return model.eval()
    model = _train(data)
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean()) * 100


def load() -> ModelBundle:
    data = load_digits_split()
    model = _trained_model(data)
    calib = {"x": data.x_train[:CALIBRATION_SAMPLES], "y": data.y_train[:CALIBRATION_SAMPLES]}

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            logits = m(data.x_test)
        return {
            "accuracy": float((logits.argmax(-1) == data.y_test).float().mean()) * 100,
            "test_loss": float(task_loss(logits, data.y_test)),
        }

    output_loss = CrossEntropyOutput(label_key="y")

    def output(m: nn.Module, b) -> torch.Tensor:
        return m(b["x"])

    return ModelBundle(
        name="digits-cnn",
        model=model,
        calibration=[calib],
        forward=output,
        loss=lambda m, b: output_loss(output(m, b), b),
        output=output,
        output_loss=output_loss,
        inputs=lambda b: (b["x"],),
        evaluate=evaluate,
        quality_metric="accuracy",
        description="small residual CNN on scikit-learn digits (8x8), task loss",
        tied_groups=[["block.conv_b", "block.downsample.0"]],
        info={"test_accuracy": accuracy(model, data.x_test, data.y_test)},
    )
