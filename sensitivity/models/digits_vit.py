"""`digits-vit`: a small vision transformer on scikit-learn's 8×8 digits, trained at
first use with a fixed seed and cached on disk (the `digits-cnn` scheme).

2×2 patches (16 tokens of 4 pixels) → linear patch embedding (dim 64) + learned
position embedding → 2 pre-norm blocks (4-head softmax attention written out with
`nn.Linear` q/k/v/proj, GELU MLP 64→128→64) → LayerNorm → mean over tokens →
linear head. Attention is eager (`F.softmax`), so second-order autograd and the
LRP rules for attention both apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sensitivity.data.digits import DigitsSplit
from sensitivity.models.digits_common import TRAIN_BATCH, DigitsArchitecture, train_epochs

VERSION = 1  # bump when the architecture or training recipe changes
SEED = 0
EPOCHS = 40
PATCH = 2
DIM = 64
HEADS = 4
DEPTH = 2
MLP_DIM = 128


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        weights = F.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class DigitsViT(nn.Module):
    def __init__(self):
        super().__init__()
        tokens = (8 // PATCH) ** 2
        self.patch_embed = nn.Linear(PATCH * PATCH, DIM)
        self.pos = nn.Parameter(torch.zeros(1, tokens, DIM))
        self.blocks = nn.ModuleList(Block(DIM, HEADS, MLP_DIM) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        # (b, 1, 8, 8) → (b, 16, 4): row-major 2×2 patches
        patches = x.view(b, 8 // PATCH, PATCH, 8 // PATCH, PATCH).permute(0, 1, 3, 2, 4)
        h = self.patch_embed(patches.reshape(b, -1, PATCH * PATCH)) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


def _train(data: DigitsSplit) -> DigitsViT:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is several times faster than two, here
    try:
        return _train_loop(data)
    finally:
        torch.set_num_threads(threads)


def _train_loop(data: DigitsSplit) -> DigitsViT:
    torch.manual_seed(SEED)
    model = DigitsViT()
    nn.init.normal_(model.pos, std=0.02)
    steps = EPOCHS * -(-data.x_train.shape[0] // TRAIN_BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    return train_epochs(model, data, opt, sched, EPOCHS, SEED, schedule_per_batch=True)


ARCHITECTURE = DigitsArchitecture(
    "digits-vit", VERSION, DigitsViT, _train,
    description="small vision transformer (2x2 patches, dim 64, 2 blocks, 4 heads) on "
                "scikit-learn digits (8x8), task loss",
)
