#!/usr/bin/env bash
# Fill benchmark cells on a GPU machine in ONE go: one `bench/results.py run` process per
# (model, seed, target), all at once, under one time limit; then ONE tarball, $OUT/cells.tgz,
# with each model's cells (docs/results/cells/<model>/...) and the last lines of every log
# (gpu_logs/...). Run from anywhere; it works in the repo root. Unpack at home with
#   tar xzf cells.tgz -C <repo> docs        # the cells;  tar xzf cells.tgz -C /tmp gpu_logs
#
# Settings (environment):
#   MODELS=resnet20  SEEDS=0,1,2  TARGETS=0.5,0.3,0.15   what to fill (names of results.yaml)
#   DEVICE=cuda      LIMIT=480 (seconds the workers get)  THREADS=1 (CPU threads per worker)
#   FRESH=0          1: delete docs/results/cells/<model> first (on the GPU machine's copy!),
#                    so that every cell of the model is measured on the same device
#   PY=python3       WHEELS=.whl (installed when torch_pruning is missing)  DATA=.data
#   OUT=/tmp/gpu_cells_out (the device tool sets it)   TF32=0 (1: let cuDNN use TF32)
# A worker cut off by LIMIT loses only the cell it was measuring: the finished cells of its pair
# are copied into docs/results/cells here (results.py copies them itself when the pair ends).
# The tarball is rewritten every minute while the workers run, so a call cut off early still
# brings back what was finished by then.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
MODELS=${MODELS:-resnet20} SEEDS=${SEEDS:-0,1,2} TARGETS=${TARGETS:-0.5,0.3,0.15}
DEVICE=${DEVICE:-cuda} LIMIT=${LIMIT:-480} THREADS=${THREADS:-1} FRESH=${FRESH:-0}
PY=${PY:-python3} WHEELS=${WHEELS:-.whl} DATA=${DATA:-.data}
OUT=${OUT:-/tmp/gpu_cells_out} TF32=${TF32:-0}
WORK=/tmp/gpu_cells  # run folders and logs: not under $OUT (at most 8 files come back)
RUNS=$WORK/runs LOGS=$WORK/logs STAGE=$WORK/stage
rm -rf "$WORK" && mkdir -p "$RUNS" "$LOGS" "$STAGE/gpu_logs" "$OUT"
t_start=$(date +%s)

# (a) packages: torch-pruning (pure Python) from the carried wheels; rlprune from src/
if ! "$PY" -c "import torch_pruning" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || echo "WARNING: wheel install failed"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
# (b) Fashion-MNIST: find_fashion_mnist looks in $RLPRUNE_DATA/fashion-mnist
case $DATA in /*) ;; *) DATA=$ROOT/$DATA ;; esac  # absolute, or under the repo root
[ -d "$DATA/fashion-mnist" ] && export RLPRUNE_DATA=$DATA
# fp32 stays fp32 on the GPU (rollouts, evaluation, the masked-vs-cut check); bf16 autocast of
# the fine-tunes is unaffected
[ "$TF32" = 1 ] || export NVIDIA_TF32_OVERRIDE=0

# (c) the machine
{
    nvidia-smi -L 2>&1 || echo "no nvidia-smi"
    "$PY" -c "import sys, torch, torch_pruning as tp
print('python', sys.version.split()[0], '| torch', torch.__version__, '| torch-pruning',
      tp.__version__, '| cuda', torch.cuda.is_available(), torch.version.cuda)
from rlprune.data import find_fashion_mnist; print('fashion-mnist in', find_fashion_mnist())"
    echo "CPUs: $(nproc); workers get $THREADS thread(s) and ${LIMIT}s on $DEVICE"
} 2>&1 | tee "$STAGE/gpu_logs/machine.txt"

# (d) the workers
IFS=, read -ra models <<<"$MODELS"
IFS=, read -ra seeds <<<"$SEEDS"
IFS=, read -ra targets <<<"$TARGETS"
if [ "$FRESH" = 1 ]; then
    for m in "${models[@]}"; do
        echo "FRESH=1: deleting docs/results/cells/$m"
        rm -rf "docs/results/cells/$m"
    done
fi
if command -v nvidia-smi >/dev/null; then  # GPU load every 15 s, for sizing the next run
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 \
        >"$STAGE/gpu_logs/gpu_load.csv" 2>&1 &
    smi=$!
fi
names=() pids=() owner=() cells=()  # per worker: its name, pid, model, cell file name
for m in "${models[@]}"; do
    for s in "${seeds[@]}"; do
        for t in "${targets[@]}"; do
            t=$(printf '%g' "$t")  # as results.py names the cells: t0.5_s0.json
            name=${m}_s${s}_t$t
            OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1 \
                timeout -k 15 "$LIMIT" "$PY" bench/results.py run --model "$m" --seed "$s" \
                --target "$t" --device "$DEVICE" --runs "$RUNS/$name" >"$LOGS/$name.log" 2>&1 &
            names+=("$name") pids+=($!) owner+=("$m") cells+=("t${t}_s$s.json")
        done
    done
done
echo "started ${#pids[@]} workers: ${names[*]}"

# (e) the finished cells of every pair (a worker cut off by LIMIT did not copy them) into docs/,
# then ONE tarball of the models' cells and the log tails
snapshot() {
    local i f dst dirs=() m
    for i in "${!names[@]}"; do
        for f in "$RUNS/${names[$i]}/${owner[$i]}/cells"/*/"${cells[$i]}"; do
            [ -f "$f" ] || continue  # cells are written whole (renamed into place)
            dst=docs/results/cells/${owner[$i]}/$(basename "$(dirname "$f")")
            mkdir -p "$dst" && cp -p "$f" "$dst/"
        done
        tail -n 30 "$LOGS/${names[$i]}.log" >"$STAGE/gpu_logs/${names[$i]}.log.tail"
    done
    for m in "${models[@]}"; do
        [ -d "docs/results/cells/$m" ] && dirs+=("docs/results/cells/$m")
    done
    tar czf "$WORK/cells.tgz" "${dirs[@]}" -C "$STAGE" gpu_logs && mv "$WORK/cells.tgz" "$OUT/"
}
last=$(date +%s)
while kill -0 "${pids[@]}" 2>/dev/null; do  # true while any worker runs
    sleep 5
    if [ $(($(date +%s) - last)) -ge 60 ]; then
        snapshot
        last=$(date +%s)
        n=$(find "${models[@]/#/docs/results/cells/}" -name '*.json' 2>/dev/null | wc -l)
        echo "$(($(date +%s) - t_start)) s: $n cells of ${MODELS//,/ } in docs/results/cells"
    fi
done
rcs=()
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    rcs+=($?)
done
[ -n "${smi:-}" ] && kill "$smi" 2>/dev/null
snapshot
echo
echo "=== $(($(date +%s) - t_start)) s. Workers: rc 0 done, 124/137 cut off, else failed"
failed=()
for i in "${!names[@]}"; do
    name=${names[$i]} m=${owner[$i]} cell=${cells[$i]}
    have=$(cd "docs/results/cells/$m" 2>/dev/null && ls -d -- */"$cell" 2>/dev/null |
        cut -d/ -f1 | tr '\n' ' ')
    printf '%-24s rc %-3s cells: %s\n' "$name" "${rcs[$i]}" "${have:-none}"
    case ${rcs[$i]} in 0 | 124 | 137) ;; *) failed+=("$name") ;; esac
done
for m in "${models[@]}"; do
    n=$(find "docs/results/cells/$m" -name '*.json' 2>/dev/null | wc -l)
    devs=$(grep -rhoE '"device": "[^"]*"' "docs/results/cells/$m" 2>/dev/null |
        cut -d'"' -f4 | sort | uniq -c | tr -s ' ' | tr '\n' ';')
    old=$((n - $(grep -rl '"device"' "docs/results/cells/$m" 2>/dev/null | wc -l)))
    echo "$m: $n cells in docs/results/cells/$m; devices:$devs $old older (cpu)"
done
for name in "${failed[@]}"; do
    echo "--- $name failed; its log ends:"
    tail -n 30 "$LOGS/$name.log"
done
ls -l "$OUT/cells.tgz"
