"""Fixtures shared by the serial test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small convs: thread start-up costs far more than the work on a busy 2-core box.

    Modules that convolve many tiny tensors use it (pytestmark usefixtures).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
