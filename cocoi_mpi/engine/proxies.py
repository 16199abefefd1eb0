"""The proxies that stand in for distributed convs (``CodedConv``) and conv blocks
(``CodedBlock``) in any nn.Module and hand their forward to the engine, and the
functions that install them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..codes import BLOCK, CONV
from ..geometry.blocks import BlockLoc, BlockSpec, block_modules, block_spec
from ..geometry.conv import ConvSpec, NotSplittable, conv_spec
from .core import local_conv

if TYPE_CHECKING:
    import torch

    from .core import Engine


class CodedConv(nn.Module):
    """Stands in for a Conv2d and hands its forward to the engine.

    A type-1 conv runs as a coded round when the scheme in use distributes it; any
    other conv (``local``: the first one, one the plan keeps, or one that cannot be
    cut) runs on the master as ``local_conv``, whose output is width-major
    (geometry/layout.py) like a coded round's, so the next coded round cuts
    contiguous windows. The reference forward (``engine.bypass``) runs the Conv2d
    itself."""

    def __init__(self, conv: nn.Conv2d, spec: ConvSpec, engine: Engine, local: bool = False):
        super().__init__()
        self.conv, self.spec, self.local = conv, spec, local
        self._engine = [engine]  # a list keeps the engine out of the module tree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        engine = self._engine[0]
        if engine.bypass:
            return self.conv(x)
        if self.local or not self.distributed(engine):
            return local_conv(self.spec, x)
        return engine.run_conv(self.spec, x)

    def distributed(self, engine: Engine) -> bool:
        """Only schemes that code single convs distribute this one, and of those only
        the cells whose plan made it type-1 (``engine.active``; None: every proxy)."""
        active = engine.active is None or self.spec.name in engine.active
        return engine.codes(CONV) and active


class CodedBlock(nn.Module):
    """Stands in for a conv block (its first module; the others become Identity).

    Under a block scheme (learned) the engine runs the block as one coded round when
    it has a codec for it; otherwise the original layers run, with their conv proxies
    inside (which distribute under conv schemes only).
    """

    def __init__(self, inner: nn.Sequential, spec: BlockSpec, engine: Engine):
        super().__init__()
        self.inner, self.spec = inner, spec
        self._engine = [engine]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        engine = self._engine[0]
        coded = engine.codes(BLOCK) and self.spec.name in engine.codecs
        if engine.bypass or not coded:
            return self.inner(x)
        return engine.run_block(self.spec, x)


def install_blocks(
    model: nn.Module, engine: Engine, locs: list[BlockLoc], first_id: int = 10_000
) -> list[BlockSpec]:
    """Replace each block by a CodedBlock proxy; ``locs`` come from ``find_blocks``,
    taken before conv proxies were installed (the spec unwraps them)."""
    specs = []
    for i, loc in enumerate(locs):
        modules = block_modules(model, loc)
        plain = [m.conv if isinstance(m, CodedConv) else m for m in modules]
        spec = block_spec(first_id + i, loc.name, plain)
        container = model.get_submodule(loc.container) if loc.container else model
        container[loc.start] = CodedBlock(nn.Sequential(*modules), spec, engine)
        for j in range(loc.start + 1, loc.stop):
            container[j] = nn.Identity()
        specs.append(spec)
    return specs


def type1_convs(model: nn.Module, skip_first: bool = True) -> list[tuple[str, nn.Conv2d]]:
    """The convs to distribute: every Conv2d but the first (until planning decides)."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[1:] if skip_first else convs


def install(
    model: nn.Module, engine: Engine, skip_first: bool = True, only: set[str] | None = None
) -> list[ConvSpec]:
    """Replace type-1 convs by CodedConv proxies in place; return their specs in order.

    ``only``: names of the convs to distribute (a plan's type-1 choice); otherwise every
    conv but the first (``skip_first``).
    """
    specs = []
    every = type1_convs(model, skip_first=False)  # before any proxy wraps one
    convs = type1_convs(model, skip_first=only is None and skip_first)
    if only is not None:
        convs = [(name, conv) for name, conv in convs if name in only]
    chosen = {name for name, _ in convs}
    for layer_id, (name, conv) in enumerate(convs):
        try:
            spec = conv_spec(layer_id, name, conv)
        except NotSplittable:
            continue
        set_submodule(model, name, CodedConv(conv, spec, engine))
        specs.append(spec)
    for name, conv in every:
        if name in chosen:
            continue
        try:
            spec = conv_spec(-1, name, conv)
        except NotSplittable:
            continue  # a padding mode local_conv does not reproduce: torch runs it
        set_submodule(model, name, CodedConv(conv, spec, engine, local=True))
    return specs


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
