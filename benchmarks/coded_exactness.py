"""How far the in-process coded forward is from the model's own, per silent pattern.

    python benchmarks/coded_exactness.py

VGG16 at n = 10, k = 8 and ResNet18 at k = 7 (seeded weights and input), every conv
but the first distributed by ``LocalEngine`` with no worker, worker 0, and workers 1
and 4 silent, with the master's layout wrappers installed as in a run. Prints
max|coded - model| / max|model| of the logits and whether top-1 agrees (docs/master.md).
"""

from __future__ import annotations

import copy

import torch

from cocoi_mpi.engine.core import LocalEngine
from cocoi_mpi.engine.proxies import install
from cocoi_mpi.geometry.layout import install_layout
from cocoi_mpi.models import build_model, input_shape

CASES = (("vgg16", 8), ("resnet18", 7))
SILENT = ((), (0,), (1, 4))


def main() -> None:
    torch.set_num_threads(1)
    for name, k in CASES:
        model = build_model(name).eval()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((1, *input_shape(name)), generator=gen)
        with torch.no_grad():
            want = model(x)
            for silent in SILENT:
                net = copy.deepcopy(model)
                install(net, LocalEngine(10, k, silent=frozenset(silent)))
                install_layout(net)
                got = net(x)
                err = ((got - want).abs().max() / want.abs().max()).item()
                same = bool(got.argmax() == want.argmax())
                print(f"{name} k={k} silent={list(silent)}: rel err {err:.2e}, top-1 same {same}")


if __name__ == "__main__":
    main()
