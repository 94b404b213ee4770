"""Prunable units: groups of coupled output channels found by torch-pruning's DependencyGraph.

A *unit* is what the agent decides on: a set of channel indices that must be removed together.
For a plain conv that is its output channels (plus its BN and the next layer's input channels);
for convs whose outputs meet in a residual add, or a depthwise conv tied to its expansion conv,
all of them form ONE unit: removing channel k removes it everywhere in the group.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from rlprune.errors import PruningError

__all__ = ["Unit", "build_graph", "classifier_names", "find_units", "resolve_min_keep"]

log = logging.getLogger(__name__)

_ROOT_TYPES = (nn.Conv2d,)


@dataclass(frozen=True)
class Unit:
    """One decision of the agent.

    Attributes:
        name: stable id: the first (in module order) conv whose output channels are cut.
        channels: current channel count of the group.
        producers: modules whose OUTPUT carries the channels (convs, BNs), in module order.
        consumers: modules whose INPUT channels are cut (next convs, linears).
        depth: position of the unit in forward order, 0-based.
        mac_share: MACs of all touched modules / model MACs (0..1).
    """

    name: str
    channels: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    depth: int
    mac_share: float

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module the unit touches."""
        return self.producers + self.consumers


def resolve_min_keep(min_keep: float, channels: int) -> int:
    """Channels a unit must keep: ``min_keep >= 1`` is a count, ``< 1`` a fraction (>= 1)."""
    if min_keep >= 1:
        return int(min(channels, int(min_keep)))
    return min(channels, max(1, math.ceil(min_keep * channels - 1e-9)))


def classifier_names(model: nn.Module) -> list[str]:
    """The final classifier: the last ``nn.Linear`` in module order, else the last conv."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return [linears[-1]]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[-1:]


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` into a torch-pruning dependency graph (clear error if it cannot)."""
    was_training = model.training
    model.eval()
    try:
        # forward_fn: torch-pruning's default forward wraps the call in a bare `except:`, which
        # would swallow Ctrl-C during tracing.
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_input, forward_fn=lambda m, x: m(x)
        )
    except Exception as e:  # tracing failures come in many types
        raise PruningError(
            f"torch-pruning cannot trace this model ({type(e).__name__}: {e}); "
            "exclude the offending layers or simplify the forward"
        ) from e
    finally:
        model.train(was_training)


def find_units(
    model: nn.Module,
    example_input: torch.Tensor,
    exclude: Iterable[str] = (),
    graph: tp.DependencyGraph | None = None,
) -> list[Unit]:
    """Enumerate the prunable units of ``model`` in forward (module) order.

    Args:
        model: any CNN built from standard layers.
        example_input: ``[1, C, H, W]`` input used to trace the graph.
        exclude: module names never to prune; a unit touching an excluded PRODUCER is dropped.
        graph: a graph already built for ``model`` (rebuilt if None).

    Raises:
        PruningError: the model cannot be traced, or it has no prunable conv.
    """
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    excluded = set(exclude)
    unknown = excluded - set(order)
    if unknown:
        raise PruningError(f"--exclude names unknown layer(s): {', '.join(sorted(unknown))}")
    ignored = [dict(model.named_modules())[n] for n in classifier_names(model)]
    dg = graph if graph is not None else build_graph(model, example_input)
    _, _, layer_macs, _ = tp.utils.count_ops_and_params(model, example_input, layer_wise=True)
    total = float(layer_macs.get(model, 0.0)) or 1.0
    units: list[Unit] = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES):
        producers: set[str] = set()
        consumers: set[str] = set()
        for dep, _idxs in group:
            mod = dep.target.module
            if mod not in names:  # torch-pruning's internal ops (add, relu, reshape)
                continue
            if dep.handler.__name__ == "prune_out_channels":
                producers.add(names[mod])
            else:
                consumers.add(names[mod])
        if not producers or producers & excluded or any(m in producers for m in ignored):
            continue
        prods = tuple(sorted(producers, key=order.__getitem__))
        cons = tuple(sorted(consumers - producers, key=order.__getitem__))
        mods = dict(model.named_modules())
        root = next(p for p in prods if isinstance(mods[p], nn.Conv2d))
        macs = sum(float(layer_macs.get(mods[n], 0.0)) for n in prods + cons)
        units.append(
            Unit(
                name=root,
                channels=int(mods[root].out_channels),
                producers=prods,
                consumers=cons,
                depth=0,
                mac_share=macs / total,
            )
        )
    if not units:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if convs and not any(isinstance(dep_m, nn.Conv2d) for dep_m in dg.module2node):
            raise PruningError(
                f"torch-pruning's trace did not see the model's convs ({', '.join(convs[:3])}"
                "...): does the forward run them under torch.no_grad or outside autograd?"
            )
        raise PruningError("the model has no prunable conv layer (after exclusions)")
    units.sort(key=lambda u: order[u.producers[0]])
    return [
        Unit(u.name, u.channels, u.producers, u.consumers, i, u.mac_share)
        for i, u in enumerate(units)
    ]
