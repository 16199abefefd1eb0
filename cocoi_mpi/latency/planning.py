"""Per-layer split decisions: k°, k*, and whether a conv is type-1 at all.

A conv is worth distributing (type-1, appendix A) only if its predicted distributed
latency beats running it on the master. Pure: numpy, plus torch only to read layer
shapes off a model (:func:`model_layer_shapes`), which needs no weights or data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .counts import LayerShape, max_feasible_k
from .model import approx_latency, k_circ, local_latency, mc_latency
from .profile import Profile

if TYPE_CHECKING:
    from torch import nn

METHODS = ("auto", "star")


@dataclass(frozen=True)
class LayerPlan:
    """The decision for one layer (or block).

    ``k`` is the chosen k (0: the layer cannot be cut at all); ``L_by_k[k-1]`` and
    ``E_by_k[k-1]`` are L(k) (eq. 16) and E[T^c(k)] (Monte Carlo) for k = 1..k_max;
    ``E_by_k`` is None when no samples were asked for. ``predicted_s`` is E[T^c(k)]
    (L(k) without samples); ``distribute`` says whether that beats ``local_s``.
    """

    k: int
    predicted_s: float
    local_s: float
    distribute: bool
    L_by_k: np.ndarray
    E_by_k: np.ndarray | None
    k_circ: int = 0
    k_star: int | None = None
    method: str = "auto"
    reason: str = ""
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ks(self) -> np.ndarray:
        return np.arange(1, len(self.L_by_k) + 1)

    @property
    def L_circ(self) -> float:
        """L(k°)."""
        return float(self.L_by_k[self.k_circ - 1]) if self.k_circ else float("inf")

    @property
    def E_star(self) -> float | None:
        """E[T^c(k*)]."""
        if self.E_by_k is None or not self.k_star:
            return None
        return float(self.E_by_k[self.k_star - 1])

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON)."""
        return {
            "name": self.name,
            "k": self.k,
            "k_circ": self.k_circ,
            "k_star": self.k_star,
            "method": self.method,
            "predicted_s": self.predicted_s,
            "local_s": self.local_s,
            "distribute": self.distribute,
            "reason": self.reason,
            "L_by_k": [float(v) for v in self.L_by_k],
            "E_by_k": None if self.E_by_k is None else [float(v) for v in self.E_by_k],
        }


def plan_layer(
    shape: LayerShape | Sequence[LayerShape],
    n: int,
    profile: Profile,
    method: str | int = "auto",
    m: int = 2,
    samples: int = 20000,
    seed: int = 0,
    failures: int = 0,
    search: str = "integer",
    k_cap: int | None = None,
) -> LayerPlan:
    """Choose k for one conv (or a block: a sequence of convs) and decide type-1.

    ``method``: "auto" = k° (closed form, the paper's practical choice), "star" = k*
    (Monte Carlo argmin, needs ``samples`` > 0), or an int k (clamped to what fits).
    ``search`` is how k° is found (see :func:`cocoi_mpi.latency.model.k_circ`); the default
    "integer" sees the integer piece widths, "relaxed" is the paper's procedure.
    Blocks have no relaxed L, so their k° is always the integer argmin of L(k).
    ``k_cap``: never plan a k above it (the largest k the code decodes exactly at n,
    codes.safety.largest_safe_k).
    """
    name = shape.name if isinstance(shape, LayerShape) else "+".join(s.name for s in shape)
    local_s = local_latency(shape, profile)
    k_max = max_feasible_k(shape, n, m, failures)
    if k_cap is not None:
        k_max = min(k_max, k_cap)
    if k_max < 1:
        why = f"output narrower than {m} pieces" if n - failures >= 1 else "no live worker"
        return LayerPlan(0, float("inf"), local_s, False, np.empty(0), None, reason=why, name=name)
    ks = np.arange(1, k_max + 1)
    L_by_k = np.asarray(approx_latency(shape, n, ks, profile, m, failures=failures), dtype=float)
    if isinstance(shape, LayerShape):
        kc = k_circ(shape, n, profile, m, failures, search).k
    if not isinstance(shape, LayerShape) or kc > k_max:  # blocks, or k° past the cap
        kc = int(ks[np.argmin(L_by_k)])
    E_by_k, ks_star = None, None
    if samples > 0:
        _, E_by_k = mc_latency(shape, n, profile, ks, m, samples, seed, failures)
        ks_star = int(ks[np.argmin(E_by_k)])
    k = _choose(method, kc, ks_star, k_max)
    predicted = float(E_by_k[k - 1]) if E_by_k is not None else float(L_by_k[k - 1])
    distribute = predicted < local_s
    reason = "" if distribute else "the master alone is predicted faster"
    return LayerPlan(
        k,
        predicted,
        local_s,
        distribute,
        L_by_k,
        E_by_k,
        kc,
        ks_star,
        str(method),
        reason,
        name,
    )


def _choose(method: str | int, kc: int, ks_star: int | None, k_max: int) -> int:
    if isinstance(method, int | np.integer) and not isinstance(method, bool):
        return int(min(max(int(method), 1), k_max))
    if method == "auto":
        return kc
    if method == "star":
        if ks_star is None:
            raise ValueError("method='star' needs samples > 0 (k* is a Monte Carlo argmin)")
        return ks_star
    raise ValueError(f"unknown method {method!r}; expected 'auto', 'star' or an int k")


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ConvEntry:
    """One Conv2d of a model: its name, shape (None if it cannot be split) and why."""

    name: str
    shape: LayerShape | None
    reason: str = ""


def model_layer_shapes(model: nn.Module, input_shape: Sequence[int]) -> list[ConvEntry]:
    """Every Conv2d of ``model`` in forward order with its LayerShape.

    One forward pass with pre-hooks that record each conv's input size: on the meta
    device (no arithmetic) when the model lives there (see :func:`build_for_shapes`),
    else on a zero image. Call it before the engine installs its proxies. Convs the
    split cannot reproduce are kept with ``shape=None`` and the reason.
    """
    import torch
    from torch import nn

    from ..geometry.conv import NotSplittable, conv_spec

    sizes: dict[str, tuple[int, int]] = {}
    order: list[str] = []
    convs = {name: mod for name, mod in model.named_modules() if isinstance(mod, nn.Conv2d)}
    hooks = []
    for name, mod in convs.items():

        def hook(_mod: nn.Module, args: tuple, name: str = name) -> None:
            if name not in sizes:
                order.append(name)
                sizes[name] = (int(args[0].shape[-2]), int(args[0].shape[-1]))

        hooks.append(mod.register_forward_pre_hook(hook))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
    out = []
    for layer_id, name in enumerate(order):
        try:
            spec = conv_spec(layer_id, name, convs[name])
            out.append(ConvEntry(name, LayerShape.from_spec(spec, *sizes[name])))
        except (NotSplittable, ValueError) as exc:
            out.append(ConvEntry(name, None, str(exc)))
    return out


def build_for_shapes(spec: str) -> nn.Module:
    """A model to read shapes from: registry models built on the meta device (instant)."""
    import torch

    from ..models import MODELS, build_model

    if spec in MODELS:
        with torch.device("meta"):
            return MODELS[spec].factory()
    return build_model(spec)


def plan_model(
    model: nn.Module,
    input_shape: Sequence[int],
    n: int,
    profile: Profile,
    method: str | int = "auto",
    m: int = 2,
    samples: int = 20000,
    seed: int = 0,
    failures: int = 0,
    search: str = "integer",
    k_cap: int | None = None,
) -> list[tuple[ConvEntry, LayerPlan]]:
    """:func:`plan_layer` for every Conv2d of a model, in forward order."""
    plans = []
    for entry in model_layer_shapes(model, input_shape):
        if entry.shape is None:
            plan = LayerPlan(
                0,
                float("inf"),
                float("nan"),
                False,
                np.empty(0),
                None,
                reason=entry.reason,
                name=entry.name,
            )
        else:
            plan = plan_layer(
                entry.shape, n, profile, method, m, samples, seed, failures, search, k_cap
            )
        plans.append((entry, plan))
    return plans


def format_plan(plans: Sequence[tuple[ConvEntry, LayerPlan]], markdown: bool = False) -> str:
    """The `cocoi plan` table: k°, k*, L(k°), E[T^c(k*)], local time, decision."""
    head = ["layer", "shape", "k°", "k*", "k", "L(k°) s", "E[T(k*)] s", "pred s", "local s", "type"]
    rows = []
    for entry, p in plans:
        s = entry.shape
        geom = "-" if s is None else f"{s.c_in}x{s.h_in}x{s.w_in - sum(s.pad_w)}->{s.c_out}"
        e_star = p.E_star
        rows.append(
            [
                entry.name,
                geom,
                str(p.k_circ or "-"),
                str(p.k_star or "-"),
                str(p.k or "-"),
                _num(p.L_circ),
                "-" if e_star is None else _num(e_star),
                _num(p.predicted_s),
                _num(p.local_s),
                "1 (distribute)" if p.distribute else f"local: {p.reason}",
            ]
        )
    return text_table(head, rows, markdown)


def _num(v: float) -> str:
    return "-" if not np.isfinite(v) else f"{v:.4g}"


def text_table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    """A markdown table, or plain columns padded to width (the CLI tables of latency/)."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{w}s}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [head, *rows])
