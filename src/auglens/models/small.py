"""A small CIFAR-style residual CNN: 3 stages (w, 2w, 4w channels; w=16 by default), the last at
input/4 resolution."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet for 32×32 inputs: stem → layer1 (w ch, 32×32) → layer2 (2w, 16×16) → layer3 (4w, 8×8).

    Grad-CAM's default target is ``layer3`` (8×8 at 32×32 input, so maps are not degenerate).
    """

    def __init__(self, num_classes: int = 10, width: int = 16, blocks: int = 1) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        self.layer1 = self._stage(w, w, blocks, 1)
        self.layer2 = self._stage(w, 2 * w, blocks, 2)
        self.layer3 = self._stage(2 * w, 4 * w, blocks, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(cin, cout, stride)]
        layers += [BasicBlock(cout, cout, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


class FastResNet(nn.Module):
    """Residual CNN for small inputs that is cheap on CPU: a ``patch``×``patch`` patchify stem
    (stride = patch, as ConvNeXt/airbench; no information lost: 3·patch² values per patch), then
    ``layer1`` (w channels) and ``layer2`` (2w; the Grad-CAM layer) — with ``patch`` 2 at input/2
    and input/4, with ``patch`` 4 both at input/4. Either way the CAM is 8×8 at 32×32 input.

    Multiply-adds per 32×32 image at width 16: 2.2 M (patch 2), 1.2 M (patch 4), against 3.2 M for
    ``SmallResNet`` at width 8 and 12.5 M at width 16; nothing runs at full resolution.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, blocks: int = 1,
                 patch: int = 2) -> None:
        super().__init__()
        if patch not in (2, 4):
            raise ValueError(f"patch must be 2 or 4, got {patch}")
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, patch, patch, 0, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        self.layer1 = SmallResNet._stage(w, w, blocks, 1)
        self.layer2 = SmallResNet._stage(w, 2 * w, blocks, 2 if patch == 2 else 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))
