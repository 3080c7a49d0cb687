"""The DataLoader case of bench_train_throughput.py: a map-style Dataset that makes each sample
in `__getitem__` (as an image pipeline decodes and augments) and a small model, imported by
both sides (`torchdeck train --model bench_data:model --data bench_data:images` from this
directory, and plain_loop.py --dataloader)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

SIZE = 20_000  # samples; 10% held out by both sides
SIDE = 32


class Images(Dataset):
    """3x32x32 float images made from the index, plus per-read noise (augmentation), 10 classes."""

    def __len__(self) -> int:
        return SIZE

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        x = torch.rand(3, SIDE, SIDE, generator=g) + 0.05 * torch.randn(3, SIDE, SIDE)
        return x, i % 10


def images() -> Images:
    return Images()


def model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 256), nn.ReLU(), nn.Linear(256, 10))
