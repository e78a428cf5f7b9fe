"""`digits-cnn`: a small CNN with BatchNorm and a residual block, trained at first
use on scikit-learn's bundled 8×8 digits with a fixed seed and cached on disk."""

from __future__ import annotations

import torch
from torch import nn

from sensitivity.data.digits import DigitsSplit
from sensitivity.models.digits_common import DigitsArchitecture, train_epochs

VERSION = 1  # bump when the architecture or training recipe changes
SEED = 0
EPOCHS = 40


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
    torch.manual_seed(SEED)
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    return train_epochs(model, data, opt, sched, EPOCHS, SEED, schedule_per_batch=False)


ARCHITECTURE = DigitsArchitecture(
    "digits-cnn", VERSION, DigitsCNN, _train,
    description="small residual CNN on scikit-learn digits (8x8), task loss",
    tied_groups=[["block.conv_b", "block.downsample.0"]],
)
