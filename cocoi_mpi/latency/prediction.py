"""What the simulator predicts for the requests a trace served: ``cocoi predict``.

For every cell of a run (scheme, scenario, level) the prediction is the mean of its
requests' own undistributed time (what the master ran alone: the same for every
scheme, taken from the trace) plus the simulated mean of each round the request
ran: its layer, scheme and k as recorded, under the cell's scenario, the run's
injected jitter and failure detection, and a profile (``cocoi fit`` of a calibration
run on the same testbed). So the measured and predicted CoCoI/uncoded ratios can be
put side by side, cell by cell (issue 18's map).

Pure apart from reading the trace (as :mod:`.fit`); the rounds are simulated by
:mod:`.simulate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ResultError
from ..experiment.scenarios import Scenario as RunScenario
from ..statuses import BASELINE_SCHEME
from .counts import LayerShape
from .planning import text_table
from .profile import Profile
from .sim_schemes import Scenario
from .simulate import simulate

# Run schemes the simulator draws, by the simulator's name of each.
SIMULATED = {"cocoi": "cocoi", "uncoded": "uncoded", "replication": "replication"}


class PredictionError(ResultError, ValueError):
    """A trace the prediction cannot use (the message says why)."""


@dataclass(frozen=True)
class CellPrediction:
    """One cell's measured and predicted mean latency."""

    scheme: str
    scenario: int
    level: float
    requests: int
    measured_s: float
    predicted_s: float
    local_s: float  # the measured undistributed part, in both

    @property
    def error(self) -> float:
        return self.predicted_s / self.measured_s - 1.0


def run_scenario(config: dict, kind: int, level: float) -> Scenario:
    """The simulator's scenario for one cell of a run with this config."""
    sc = RunScenario(
        kind=kind,
        lambda_tr=level if kind == 1 else 0.0,
        failures=int(level) if kind in (2, 3) else 0,
        straggler_factor=float(config.get("straggler_factor", RunScenario.straggler_factor)),
        straggler_prob=float(config.get("straggler_prob", RunScenario.straggler_prob)),
        jitter=str(config.get("jitter", "none")),
        detection=str(config.get("detection", "immediate")),
    )
    timeout = config.get("round_timeout", "auto")
    deadline = float(timeout) if isinstance(timeout, int | float) else math.inf
    return replace(Scenario.of(sc), deadline_s=deadline)


def layer_shapes(config: dict) -> dict[str, LayerShape]:
    """Every conv of the run's model by name (the rounds name their layer)."""
    from ..models import input_shape
    from .planning import build_for_shapes, model_layer_shapes

    net = build_for_shapes(str(config.get("model", "vgg16")))
    shape = input_shape(str(config.get("model", "vgg16")), net)
    return {e.name: e.shape for e in model_layer_shapes(net, shape) if e.shape is not None}


def predict_trace(
    trace: object, profile: Profile, samples: int = 2000, seed: int = 0
) -> list[CellPrediction]:
    """Measured vs predicted mean latency of each simulated cell of ``trace``."""
    config = trace.config  # type: ignore[attr-defined]
    req, rounds = trace.requests, trace.rounds  # type: ignore[attr-defined]
    if req["request"].size == 0:
        raise PredictionError(f"{trace.path}: no request was served")  # type: ignore[attr-defined]
    shapes = layer_shapes(config)
    by_request: dict[int, list[tuple[str, int, int]]] = {}
    for i in range(rounds["round"].size):
        if rounds["fallback"][i]:
            continue
        key = (str(rounds["layer"][i]), int(rounds["k"][i]), int(rounds["n"][i]))
        by_request.setdefault(int(rounds["request"][i]), []).append(key)
    cache: dict[tuple, float] = {}
    cells: dict[tuple, list[tuple[float, float, float]]] = {}
    for i in range(req["request"].size):
        scheme = str(req["scheme"][i])  # the sweep's label: cocoi:auto, cocoi:6, uncoded
        if scheme.split(":")[0] not in SIMULATED:
            continue
        kind, level = int(req["scenario"][i]), float(req["level"][i])
        scenario = run_scenario(config, kind, level)
        dist = 0.0
        for layer, k, n in by_request.get(int(req["request"][i]), []):
            if layer not in shapes:
                raise PredictionError(f"round of layer {layer!r}: not a conv of the model")
            key = (layer, SIMULATED[scheme.split(":")[0]], k, n, scenario)
            if key not in cache:
                cache[key] = round_mean(shapes[layer], key[1], k, n, profile, scenario,
                                        samples, seed)  # fmt: skip
            dist += cache[key]
        local = float(req["latency"][i] - req["distributed_s"][i])
        cells.setdefault((scheme, kind, level), []).append((float(req["latency"][i]), dist, local))
    out = []
    for (scheme, kind, level), rows in sorted(cells.items()):
        measured, dist, local = (float(np.mean(col)) for col in zip(*rows, strict=True))
        out.append(CellPrediction(scheme, kind, level, len(rows), measured, local + dist, local))
    return out


def round_mean(
    shape: LayerShape, scheme: str, k: int, n: int, profile: Profile, scenario: Scenario,
    samples: int, seed: int,
) -> float:  # fmt: skip
    """The simulated mean latency of one round."""
    sim = SIMULATED[scheme.split(":")[0]]
    res = simulate(
        shape, n, profile, (sim,), k=k if sim == "cocoi" else None, m=1, scenario=scenario,
        samples=samples, seed=seed,
    )  # fmt: skip
    return res[0].mean


def ratio_rows(cells: Sequence[CellPrediction], scheme: str = "cocoi") -> list[dict]:
    """Per scenario level and ``scheme`` label (cocoi, cocoi:auto, cocoi:6...): its mean
    latency over uncoded's, measured and predicted."""
    index = {(c.scheme, c.scenario, c.level): c for c in cells}
    rows = []
    for c in cells:
        base = index.get((BASELINE_SCHEME, c.scenario, c.level))
        if c.scheme.split(":")[0] != scheme or base is None:
            continue
        measured = c.measured_s / base.measured_s
        predicted = c.predicted_s / base.predicted_s
        rows.append(
            dict(scheme=c.scheme, scenario=c.scenario, level=c.level, measured=measured,
                 predicted=predicted, gap=predicted / measured - 1.0)
        )  # fmt: skip
    return rows


def format_prediction(cells: Sequence[CellPrediction], markdown: bool = False) -> str:
    """The cells, then the CoCoI/uncoded ratios, as text or markdown tables."""
    head = ["scen", "level", "scheme", "requests", "measured s", "predicted s", "error",
            "undistributed s"]  # fmt: skip
    body = [
        [str(c.scenario), f"{c.level:g}", c.scheme, str(c.requests), f"{c.measured_s:.3f}",
         f"{c.predicted_s:.3f}", f"{100 * c.error:+.1f}%", f"{c.local_s:.3f}"]
        for c in cells
    ]  # fmt: skip
    ratios = ratio_rows(cells)
    head2 = ["scen", "level", "scheme", "over uncoded, measured", "predicted", "gap"]
    body2 = [
        [str(r["scenario"]), f"{r['level']:g}", r["scheme"], f"{r['measured']:.3f}",
         f"{r['predicted']:.3f}", f"{100 * r['gap']:+.1f}%"]
        for r in ratios
    ]  # fmt: skip
    return text_table(head, body, markdown) + "\n\n" + text_table(head2, body2, markdown)
