"""Which layers does the table mispredict? For one searched model (bench/latency_aware.py's
cell, its model under runs/) and global magnitude's mask at the same MACs: a table profiled
here (batch 64, CPU clock, 1 thread, layers alone), then, in one short window, every layer
call's time inside the model (``in_model_ms``) against its term's prediction, and the whole
forward against the table's. Layers off by more than 0.3 ms are listed.

    OMP_NUM_THREADS=1 .venv/bin/python bench/layer_check.py --model vgg-small --seed 1 \\
        [--arm macs_aware] [--steady-malloc]
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from benchargs import base_model, parse, parser  # bench/, beside this script
from latency_tables import latency_run
from rlprune.baselines import prune_to_target
from rlprune.checkpoint import load_model
from rlprune.machine import cpu_summary, malloc_mode
from rlprune.models import set_layout
from rlprune.pruning.calls import in_model_ms
from rlprune.pruning.profile import profile_latency
from rlprune.pruning.timing import measure_runtime

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = parser(__doc__, "vgg-small")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--arm", default="macs_aware", choices=["macs_aware", "latency_aware"])
    args = parse(p)
    torch.set_num_threads(1)
    base, ex = base_model(args.model)
    lut = profile_latency(base, ex, (64,), threads=1, clock="cpu")
    table, full = lut.tables[64], lut.units
    row = json.loads(
        (ROOT / "docs/results/latency" / f"{args.model}_s{args.seed}.json").read_text()
    )
    kind = "macs" if args.arm == "macs_aware" else latency_run(row)
    path = ROOT / "runs/latency_aware" / args.model / f"{kind}_s{args.seed}" / "model.pt"
    searched = set_layout(load_model(path)[0], True).eval()
    counts = {u: int(k) for u, k in row[args.arm]["kept"].items()}
    gm = copy.deepcopy(base)
    gm_counts = prune_to_target(gm, "global-magnitude", row["target_macs"], ex)
    print(f"{args.model}, {cpu_summary()}, {malloc_mode()} malloc, batch 64, 1 thread, cpu clock")
    for name, net, kept in ((f"{kind} s{args.seed}", searched, counts),
                            ("global-magnitude", set_layout(gm, True).eval(), gm_counts)):  # fmt: skip
        inside = in_model_ms(net, ex, 64, 1, 20, "cpu")
        whole = measure_runtime(net, ex, 64, 1, "torch", 20, "cpu")
        widths = {**full, **kept}
        raw = sum(t.predict(*t.widths(widths, full)) for t in table.terms)
        print(f"{name} {kept}: whole {whole:.2f} ms, predicted {lut.model(64)(kept):.2f} ms; "
              f"layers: predicted {raw:.2f}, in the model {sum(inside.values()):.2f} ms")  # fmt: skip
        for t in table.terms:
            a, b = t.widths(widths, full)
            if abs(inside[t.name] - t.predict(a, b)) > 0.3:
                print(f"  {t.name} ({a:.0f} -> {b:.0f}): predicted {t.predict(a, b):.2f}, "
                      f"in the model {inside[t.name]:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
