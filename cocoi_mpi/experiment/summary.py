"""The closing lines of a run, folded in request by request.

The master used to keep every request's row for the end-of-run summary: a few KB per
request, tens of MB over a day-long run. Each row is in the trace already; for the
summary a handful of running figures is enough, so the master's memory stays flat
however many requests it serves (issue 16, the soak in docs/reliability.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..codes import is_exact


@dataclass
class Agreement:
    """How a group of requests compares with the local forward."""

    count: int = 0
    same_top1: int = 0
    worst_rel_err: float = 0.0

    def add(self, row: dict) -> None:
        self.count += 1
        self.same_top1 += row["predicted"] == row["reference_predicted"]
        self.worst_rel_err = max(self.worst_rel_err, row["rel_err"])


@dataclass
class Accuracy:
    """Top-1 hits against the labels, of the coded run and of the local forward."""

    count: int = 0
    hits: int = 0
    local_hits: int = 0
    all_checked: bool = True  # every request had a local forward to compare

    def add(self, row: dict) -> None:
        self.count += 1
        self.hits += row["predicted"] == row["label"]
        if "reference_predicted" in row:
            self.local_hits += row["reference_predicted"] == row["label"]
        else:
            self.all_checked = False


@dataclass
class RunSummary:
    """Running figures over the requests served: latency, coding share, agreement with
    the local forward (exact and learned schemes apart) and accuracy per scheme."""

    requests: int = 0
    latency_sum: float = 0.0
    latency_min: float = math.inf
    latency_max: float = 0.0
    coding_sum: float = 0.0  # encode_s + decode_s of the request rows
    exact: Agreement = field(default_factory=Agreement)
    learned: Agreement = field(default_factory=Agreement)
    accuracy: dict[str, Accuracy] = field(default_factory=dict)

    def add(self, row: dict) -> None:
        """Fold in one request row (runtime.serving.request_row)."""
        self.requests += 1
        latency = row["latency"]
        self.latency_sum += latency
        self.latency_min = min(self.latency_min, latency)
        self.latency_max = max(self.latency_max, latency)
        self.coding_sum += row["encode_s"] + row["decode_s"]
        if "rel_err" in row:
            group = self.exact if is_exact(row["scheme"]) else self.learned
            group.add(row)
        if row.get("label", -1) >= 0:
            self.accuracy.setdefault(row["scheme"], Accuracy()).add(row)

    @property
    def latency_mean(self) -> float:
        return self.latency_sum / self.requests if self.requests else math.nan

    @property
    def coding_share(self) -> float:
        """Encode + decode as a percentage of the summed latency."""
        return 100.0 * self.coding_sum / self.latency_sum if self.latency_sum else math.nan

    def accuracy_lines(self) -> list[str]:
        """Top-1 accuracy per scheme when the inputs carry labels (--data)."""
        lines = []
        for scheme, acc in self.accuracy.items():
            line = (
                f"accuracy [{scheme}]: {100.0 * acc.hits / acc.count:.2f}% ({acc.hits}/{acc.count})"
            )
            if acc.all_checked:
                line += f"; local forward {100.0 * acc.local_hits / acc.count:.2f}%"
            lines.append(line)
        return lines
