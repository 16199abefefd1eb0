"""Fixtures shared by the serial test modules."""

from __future__ import annotations

import os
import subprocess
import sys

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


def pytest_addoption(parser):
    parser.addoption(
        "--hogs",
        type=int,
        default=int(os.environ.get("COCOI_TEST_HOGS", "0")),
        help="run the tests with N processes burning a core each in the background "
        "(default $COCOI_TEST_HOGS or 0): the loaded machine our users share",
    )


@pytest.fixture(scope="session", autouse=True)
def cpu_hogs(request):
    """--hogs N: N busy loops for the whole session, ended when it ends (even on ^C)."""
    count = request.config.getoption("--hogs")
    if count < 0:
        raise pytest.UsageError(f"--hogs must be >= 0, got {count}")
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(count)
    ]
    yield hogs
    for hog in hogs:
        hog.kill()
        hog.wait()


def pytest_report_header(config):
    count = config.getoption("--hogs")
    return [f"cpu hogs: {count} busy processes in the background"] if count else []
