"""Prunable units: groups of coupled output channels found by torch-pruning's DependencyGraph.

A *unit* is what the agent decides on: a set of channel indices that must be removed together.
For a plain conv that is its output channels (plus its BN and the next layer's input channels);
for convs whose outputs meet in a residual add, or a depthwise conv tied to its expansion conv,
all of them form ONE unit: removing channel k removes it everywhere in the group.

Members need not share the unit's numbering: a conv feeding a concatenation owns a slice of
the concatenated tensor, a linear layer after ``flatten`` reads ``H*W`` inputs per channel, and
a grouped conv (``groups=G``) can only lose the same in-group position in every group, so one
decision of the unit removes ``G`` of its channels. Such members carry a map (their local
channel indices and the unit channel each one belongs to) built from torch-pruning's index
mapping; :meth:`Unit.index` reads it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
import torch_pruning as tp
from torch import nn

from rlprune.errors import PruningError

__all__ = [
    "ChannelMap",
    "Unit",
    "build_graph",
    "classifier_names",
    "resolve_min_keep",
    "round_count",
    "trace_units",
]

log = logging.getLogger(__name__)

_ROOT_TYPES = (nn.Conv2d,)

# (member, True for its input channels, its local channel indices, the unit channel of each)
ChannelMap = tuple[str, bool, tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class Unit:
    """One decision of the agent.

    Attributes:
        name: stable id: the first (in module order) conv whose output channels all belong to
            the unit and span all of its channels (the root of its torch-pruning group).
        channels: number of decisions of the unit (a mask is ``[channels]``); equal to the
            root's output channels unless a grouped conv ties channels across its groups.
        producers: modules whose OUTPUT carries the channels (convs, BNs), in module order.
        consumers: modules whose INPUT channels are cut (next convs, linears).
        depth: position of the unit in forward order, 0-based.
        mac_share: MACs of all touched modules / model MACs (0..1).
        maps: the members whose channels are not exactly the unit's ``0..channels-1``
            (concat slices, flatten, grouped convs): see :meth:`index`.
    """

    name: str
    channels: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    depth: int
    mac_share: float
    maps: tuple[ChannelMap, ...] = ()

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module the unit touches."""
        return self.producers + self.consumers

    def index(self, member: str, inputs: bool = False) -> tuple[list[int], list[int]]:
        """``(local, unit)``: the member's output (``inputs``: input) channels in the unit and
        the unit channel each belongs to; the member's other channels are not the unit's."""
        for name, is_input, local, unit in self.maps:
            if name == member and is_input == inputs:
                return list(local), list(unit)
        same = list(range(self.channels))
        return same, same

    def spread(
        self, mask: torch.Tensor, member: str, size: int, inputs: bool = False
    ) -> torch.Tensor:
        """A unit mask ``[..., channels]`` as the member sees it: ``[..., size]`` (1 where the
        member's channel is not the unit's)."""
        local, unit = self.index(member, inputs)
        if size == self.channels and local == unit:
            return mask
        full = mask.new_ones(*mask.shape[:-1], size)
        full[..., local] = mask[..., unit]
        return full

    def gather(
        self, values: torch.Tensor, member: str, inputs: bool = False, mean: bool = False
    ) -> torch.Tensor:
        """A member's per-channel ``values [N]`` on the unit's channels: ``[channels]``, summed
        (``mean``: averaged) over the member channels of each unit channel (a grouped conv has
        ``G`` per unit channel; 0 where the member has none)."""
        local, unit = self.index(member, inputs)
        dev = values.device
        idx = torch.tensor(unit, dtype=torch.long, device=dev)
        out = torch.zeros(self.channels, dtype=values.dtype, device=dev)
        out.index_add_(0, idx, values[torch.tensor(local, dtype=torch.long, device=dev)])
        if mean:
            count = torch.zeros(self.channels, dtype=values.dtype, device=dev)
            count.index_add_(0, idx, torch.ones_like(idx, dtype=values.dtype))
            out = out / count.clamp_min(1)
        return out


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


class _Union:
    """Union-find over a unit's root channels (a grouped conv ties positions across groups)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _member_groups(mod: nn.Module, is_input: bool) -> tuple[int, int]:
    """``(channel groups G, channels N)`` of a member's side: a grouped conv can only lose the
    same in-group position in all ``G`` groups. A depthwise conv (one channel per group, in and
    out tied by torch-pruning) and every other layer have ``G = 1``."""
    if not isinstance(mod, nn.Conv2d) or mod.groups == 1:
        return 1, 0
    if mod.groups == mod.in_channels == mod.out_channels:
        return 1, 0
    return mod.groups, mod.in_channels if is_input else mod.out_channels


def _decisions(
    members: dict[tuple[str, bool], tuple[list[int], list[int]]],
    mods: dict[str, nn.Module],
    root_channels: int,
) -> tuple[list[int], str | None]:
    """Unit channel of each root channel, and why the unit cannot be cut correctly (or None).

    Root channels a grouped conv ties together (the same in-group position in every group)
    become one decision, as torch-pruning prunes grouped convs."""
    tie = _Union(root_channels)
    for (name, is_input), (local, root) in members.items():
        groups, n = _member_groups(mods[name], is_input)
        if groups == 1:
            continue
        if sorted(local) != list(range(n)):
            return [], f"grouped conv {name} shares its groups with channels of another unit"
        at = dict(zip(local, root, strict=True))
        step = n // groups
        for lo in local:
            tie.join(at[lo], at[(lo + step) % n])
    firsts = sorted({tie.find(r) for r in range(root_channels)})
    number = {r: i for i, r in enumerate(firsts)}
    return [number[tie.find(r)] for r in range(root_channels)], None


def _unit_of_group(
    group: tp.Group,
    dg: tp.DependencyGraph,
    names: dict[nn.Module, str],
    order: dict[str, int],
) -> tuple[Unit, str | None] | None:
    """The unit of one torch-pruning group (depth and MACs filled in later), with the reason
    it cannot be cut correctly (None: it can, as far as its structure tells), or None for a
    group that touches no named module."""
    mods = {n: m for m, n in names.items()}
    root_mod = group[0].dep.target.module
    members: dict[tuple[str, bool], tuple[list[int], list[int]]] = {}
    problem = None
    for item in group:
        dep = item.dep
        mod = dep.target.module
        if mod not in names:  # torch-pruning's internal ops (add, relu, reshape)
            continue
        roots = list(getattr(item, "root_idxs", None) or item.idxs)
        if any(r is None for r in roots):
            problem = f"{names[mod]}'s channels cannot be traced back to the unit's"
            roots = list(item.idxs)
        key = (names[mod], not dg.is_out_channel_pruning_fn(dep.handler))
        local, root = members.setdefault(key, ([], []))
        local.extend(int(i) for i in item.idxs)
        root.extend(int(r) for r in roots)
    if not any(not is_in for _, is_in in members):
        return None
    root_channels = int(root_mod.out_channels)
    decision, reason = _decisions(members, mods, root_channels)
    if reason is not None:
        decision = list(range(root_channels))
    channels = max(decision) + 1
    maps: list[ChannelMap] = []
    spans: list[str] = []
    for (name, is_input), (local, root) in sorted(members.items(), key=lambda kv: order[kv[0][0]]):
        unit = [decision[r] for r in root]
        if local != list(range(channels)) or unit != local:
            maps.append((name, is_input, tuple(local), tuple(unit)))
        size = getattr(mods[name], "out_channels", None)
        if (
            not is_input
            and isinstance(mods[name], nn.Conv2d)
            and sorted(local) == list(range(int(size or 0)))
            and set(unit) == set(range(channels))
        ):
            spans.append(name)
    producers = tuple(n for (n, is_in) in sorted(members, key=lambda k: order[k[0]]) if not is_in)
    consumers = tuple(
        n
        for (n, is_in) in sorted(members, key=lambda k: order[k[0]])
        if is_in and n not in producers
    )
    name = min(spans, key=order.__getitem__) if spans else names[root_mod]
    unit_obj = Unit(name, channels, producers, consumers, 0, 0.0, tuple(maps))
    return unit_obj, problem or reason


def trace_units(
    model: nn.Module,
    example_input: torch.Tensor,
    exclude: Iterable[str] = (),
    graph: tp.DependencyGraph | None = None,
) -> list[tuple[Unit, str | None]]:
    """Every unit of ``model`` in forward (module) order, each with the reason its structure
    says it cannot be cut correctly (None if it can). No masked-vs-cut check: see
    :func:`rlprune.pruning.find_units`.

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
    mods = dict(model.named_modules())
    ignored = [mods[n] for n in classifier_names(model)]
    ignored_names = {names[m] for m in ignored}
    dg = graph if graph is not None else build_graph(model, example_input)
    _, _, layer_macs, _ = tp.utils.count_ops_and_params(model, example_input, layer_wise=True)
    total = float(layer_macs.get(model, 0.0)) or 1.0
    found: list[tuple[Unit, str | None]] = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES):
        got = _unit_of_group(group, dg, names, order)
        if got is None:
            continue
        u, reason = got
        if set(u.producers) & (excluded | ignored_names):
            continue
        macs = sum(float(layer_macs.get(mods[n], 0.0)) for n in u.modules)
        found.append((replace(u, mac_share=macs / total), reason))
    if not found:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if convs and not any(isinstance(dep_m, nn.Conv2d) for dep_m in dg.module2node):
            raise PruningError(
                f"torch-pruning's trace did not see the model's convs ({', '.join(convs[:3])}"
                "...): does the forward run them under torch.no_grad or outside autograd?"
            )
        raise PruningError("the model has no prunable conv layer (after exclusions)")
    found.sort(key=lambda ur: order[ur[0].producers[0]])
    return [(replace(u, depth=i), r) for i, (u, r) in enumerate(found)]


def round_count(kept: int, channels: int, multiple: int, need: int = 1) -> int:
    """``kept`` rounded to the nearest multiple of ``multiple`` (ties: up), never below ``need``
    and never above ``channels``; ``channels`` itself (no cut) is always allowed.

    ``round_count(21, 64, 8) == 24``, ``round_count(20, 64, 8) == 24``,
    ``round_count(3, 64, 8, need=7) == 8``, ``round_count(60, 62, 16) == 62``.
    """
    if multiple <= 1 or kept >= channels:
        return min(max(kept, need), channels)
    options = [m for m in range(multiple, channels + 1, multiple) if m >= need] + [channels]
    return min(options, key=lambda m: (abs(m - kept), -m))
