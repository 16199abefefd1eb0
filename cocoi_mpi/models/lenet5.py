"""LeNet-5 for 1x32x32 inputs (e.g. padded MNIST).

Layout and ``state_dict`` keys::

    features.0   conv1  Conv2d(in_channels, 6, 5)   -> features.0.weight / features.0.bias
    features.1   ReLU
    features.2   MaxPool2d(2)
    features.3   conv2  Conv2d(6, 16, 5)            -> features.3.weight / features.3.bias
    features.4   ReLU
    features.5   MaxPool2d(2)
    (flatten: 16 x 5 x 5 = 400)
    classifier.0 fc1    Linear(400, 120)            -> classifier.0.weight / classifier.0.bias
    classifier.1 ReLU
    classifier.2 fc2    Linear(120, 84)             -> classifier.2.weight / classifier.2.bias
    classifier.3 ReLU
    classifier.4 fc3    Linear(84, num_classes)     -> classifier.4.weight / classifier.4.bias

ReLUs are not in-place because the runtime swaps conv modules for proxies.
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """Classic LeNet-5 with ReLU and max pooling, split into ``features`` and ``classifier``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=False),
            nn.Linear(120, 84),
            nn.ReLU(inplace=False),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """LeNet-5 expecting ``in_channels`` x 32 x 32 inputs."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels)
