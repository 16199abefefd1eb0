"""VGG16 (torchvision config "D"), written out so we need no torchvision.

Layer indices and ``state_dict`` keys match ``torchvision.models.vgg16`` exactly, so
torchvision checkpoints load strictly. All ReLUs are ``inplace=False``: the runtime swaps
conv modules for proxies, and in-place activations would mutate tensors it still holds.
"""

from __future__ import annotations

import torch
from torch import nn

#: Output channels per conv layer; "M" is a 2x2/2 max pool (torchvision config "D").
CFG_D: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
    512, 512, 512, "M", 512, 512, 512, "M",
]  # fmt: skip


def make_features(cfg: list[int | str], in_channels: int = 3) -> nn.Sequential:
    """Build the conv trunk with torchvision's layer indexing (conv, ReLU, ..., pool)."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=False))
            in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG network: ``features`` -> ``avgpool`` (7x7) -> flatten -> ``classifier``."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=False),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=False),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg16(num_classes: int = 1000) -> VGG:
    """VGG16 with torchvision-compatible keys (features.0 ... features.28, classifier.0/3/6)."""
    return VGG(make_features(CFG_D), num_classes=num_classes)
