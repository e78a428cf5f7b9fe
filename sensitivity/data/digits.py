"""scikit-learn's bundled 8×8 digits, split once with a fixed seed."""

from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

TEST_FRACTION = 0.3
SEED = 0


@dataclass(frozen=True)
class DigitsSplit:
    x_train: torch.Tensor  # (n, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (n,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split() -> DigitsSplit:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        range(len(y)), test_size=TEST_FRACTION, random_state=SEED, stratify=digits.target
    )
    return DigitsSplit(x[idx_train], y[idx_train], x[idx_test], y[idx_test])
