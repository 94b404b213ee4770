"""Where the mask stops mattering: the torch.fx frontier between prefix and suffix.

A rollout only has to recompute what its mask changes; everything before the frontier is
run once per unit and cached.

Each node of the traced model is classified as

- CLEAN: independent of the unit's mask (cacheable as is),
- PRE:   equal to ``mask * v`` with ``v`` independent of the mask (cache ``v``, multiply the
  mask in at the start of the suffix). Producers of the unit whose inputs are clean are PRE;
  so are zero-preserving per-channel ops (ReLU, pooling, identity) and sums of PRE values,
  since ``relu(m*v) = m*relu(v)`` and ``m*a + m*b = m*(a+b)`` for 0/1 channel masks. This
  pushes the cut past the unit's own conv, BN and ReLU, and past a residual stream,
- DIRTY: everything else (run per rollout; later producers keep their mask hooks).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from rlprune.pruning import Unit

__all__ = ["CLEAN", "DIRTY", "PRE", "downstream_bns", "split_at_frontier"]

_ZERO_PRESERVING = (
    nn.ReLU,
    nn.ReLU6,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Identity,
    nn.Dropout,
)
_ZERO_PRESERVING_FN = {
    F.relu,
    torch.relu,
    F.relu6,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
}
_ZERO_PRESERVING_METHOD = {"relu", "relu_"}
_ADD = {operator.add, operator.iadd, torch.add}
CLEAN, PRE, DIRTY = 0, 1, 2


def downstream_bns(model: nn.Module, unit: Unit) -> list[str]:
    """BatchNorms whose input depends on the unit's mask (their statistics change).

    Found from the same fx classification as the prefix cache; for untraceable models, every
    BN after the unit's first producer in module order (a superset).
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception:
        names = [n for n, _ in model.named_modules()]
        first = names.index(unit.producers[0])
        return [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and names.index(n) > first
        ]
    status = _classify(gm, *_producers(unit))
    mods = dict(gm.named_modules())
    return [
        str(n.target)
        for n in gm.graph.nodes
        if status[n] == DIRTY
        and n.op == "call_module"
        and isinstance(mods[str(n.target)], nn.BatchNorm2d)
    ]


def _producers(unit: Unit) -> tuple[set[str], set[str]]:
    """``(producers seeing the unit's channels as they are, producers seeing them through a
    map)``: a concat slice or a grouped conv is not ``mask * v``, so it stays DIRTY (its hook
    masks it in the suffix)."""
    mapped = {name for name, is_input, _, _ in unit.maps if not is_input}
    return set(unit.producers) - mapped, set(unit.producers) & mapped


def _classify(
    gm: fx.GraphModule, producers: set[str], sliced: set[str] | frozenset[str] = frozenset()
) -> dict[fx.Node, int]:
    """CLEAN / PRE / DIRTY status of every node (see module docstring)."""
    mods = dict(gm.named_modules())
    status: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        ins = [status[a] for a in node.all_input_nodes]
        worst = max(ins, default=CLEAN)
        if node.op in ("placeholder", "get_attr"):
            s = CLEAN
        elif node.op == "call_module":
            mod = mods[str(node.target)]
            per_channel = isinstance(mod, (*_ZERO_PRESERVING, nn.BatchNorm2d)) or (
                isinstance(mod, nn.Conv2d) and mod.groups == mod.in_channels == mod.out_channels
            )
            if node.target in sliced:  # masked through a map, not as ``mask * v``
                s = DIRTY
            elif node.target in producers:
                s = PRE if worst == CLEAN or (worst == PRE and per_channel) else DIRTY
            elif worst == CLEAN:
                s = CLEAN
            else:
                s = PRE if worst == PRE and isinstance(mod, _ZERO_PRESERVING) else DIRTY
        elif node.op in ("call_function", "call_method"):
            zero_pres = (node.op == "call_function" and node.target in _ZERO_PRESERVING_FN) or (
                node.op == "call_method" and node.target in _ZERO_PRESERVING_METHOD
            )
            if worst == CLEAN:
                s = CLEAN
            elif (
                zero_pres  # relu(m*v) = m*relu(v) holds for a PRE input, not a DIRTY one
                and len(ins) == 1
                and worst == PRE
                or node.op == "call_function"
                and node.target in _ADD
                and all(i == PRE for i in ins)
            ):
                s = PRE
            else:
                s = DIRTY
        else:  # output
            s = DIRTY
        status[node] = s
    return status


def _apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask [C]`` (whole batch) or ``[B, C]`` (per sample) times ``x [B, C, ...]``."""
    rows = mask.shape[0] if mask.dim() == 2 else 1
    return x * mask.view(rows, -1, *([1] * (x.dim() - 2))).to(x)


def split_at_frontier(
    model: nn.Module, unit: Unit
) -> tuple[fx.GraphModule, fx.GraphModule, list[bool]]:
    """Split ``model`` into a mask-independent prefix and a per-rollout suffix.

    Returns:
        ``(prefix, suffix, is_pre)``: ``prefix(x) -> tuple of frontier values``;
        ``suffix(mask, *frontier) -> logits``; ``is_pre[i]`` tells whether frontier value i
        gets the mask multiplied in.
    """
    gm = fx.symbolic_trace(model)
    status = _classify(gm, *_producers(unit))
    frontier = [
        n for n in gm.graph.nodes if status[n] != DIRTY and any(status[u] == DIRTY for u in n.users)
    ]
    # Prefix graph: all non-dirty nodes, returning the frontier.
    pre_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if status[n] != DIRTY and n.op != "output":
            env[n] = pre_graph.node_copy(n, lambda a: env[a])
    pre_graph.output(tuple(env[n] for n in frontier))
    # Suffix graph: mask + frontier placeholders, then every dirty node.
    suf_graph = fx.Graph()
    mask = suf_graph.placeholder("mask")
    senv: dict[fx.Node, fx.Node] = {}
    for i, n in enumerate(frontier):
        ph = suf_graph.placeholder(f"frontier_{i}")
        senv[n] = suf_graph.call_function(_apply_mask, (ph, mask)) if status[n] == PRE else ph
    for n in gm.graph.nodes:
        if status[n] == DIRTY:
            senv[n] = suf_graph.node_copy(n, lambda a: senv[a])
    prefix, suffix = fx.GraphModule(gm, pre_graph), fx.GraphModule(gm, suf_graph)
    return prefix, suffix, [status[n] == PRE for n in frontier]
