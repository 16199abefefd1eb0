"""User CNNs for end-to-end tests, loaded by import path (--model zoo:odd_cnn)."""

from __future__ import annotations

from torch import nn


def odd_cnn() -> nn.Module:
    """Odd geometry: kernel 5, stride 2, dilation 2, 'same' padding, groups; width 45."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 5, stride=2, padding=3, dilation=2),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding="same", groups=3, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(12, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 7),
    )


odd_cnn.input_shape = (3, 23, 45)


def failing_cnn() -> nn.Module:
    """A model that rejects every input: the run must stop with one clear line."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2))


failing_cnn.input_shape = (3, 16, 16)


def wide_cnn() -> nn.Module:
    """Wide enough for tens of workers: 128 and 64 output columns, so k = 48 still
    gives every worker a piece (issue 19's 33- and 65-rank runs)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


wide_cnn.input_shape = (3, 16, 128)
