#!/usr/bin/env bash
# Latency measurements on a quieter machine than the 2-core VM (docs/LATENCY.md): one process at
# a time, pinned to one core, 1 thread, nothing else of ours running. Made for a lent GPU
# machine's 16-core CPU (the GPU is not used). Writes ONE tarball, $OUT/quiet_latency.tgz:
#   cells/{model}_s{seed}.json   docs/results/latency's cells, their three models re-measured
#                                side by side here (bench/latency_aware.py remeasure)
#   clock_{model}.json           bench/latency_clock.py: a table profiled here and 7 pruned
#                                structures, predicted vs measured
#   machine.txt, log.txt
# Needs the cells' pruned models under $MODELS/{model}/{kind}_s{seed}/model.pt (copied from
# runs/latency_aware/; the call carries them) and torch-pruning (wheels in $WHEELS if missing).
#   MODELS=.lat WHEELS=.whl CORE=3 PY=python3 bash bench/quiet_latency.sh
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
MODELS=${MODELS:-.lat} WHEELS=${WHEELS:-.whl} CORE=${CORE:-3} PY=${PY:-python3}
OUT=${OUT:-/tmp/quiet_latency_out} WORK=/tmp/quiet_latency
rm -rf "$WORK" && mkdir -p "$WORK/stage" "$OUT"
. bench/device_env.sh
S=$WORK/stage
pack() { tar czf "$WORK/q.tgz" -C "$S" . && mv "$WORK/q.tgz" "$OUT/quiet_latency.tgz"; }
machine_facts "$S/machine.txt"
run() { taskset -c "$CORE" "$PY" "$@" 2>&1 | tee -a "$S/log.txt"; }
# (1) the benchmark's pruned models, measured again side by side (wall clock, as their tables)
mkdir -p "$S/cells" && cp docs/results/latency/*.json "$S/cells/"
ln -sfn "$PWD/$MODELS" "$S/cells/runs"
for cell in docs/results/latency/*_s*.json; do
    b=$(basename "$cell" .json) m=${b%_s*} s=${b##*_s}
    run bench/latency_aware.py remeasure --model "$m" --seed "$s" --threads 1 --cells "$S/cells"
    pack
done
rm "$S/cells/runs"
# (2) a table profiled here, predicted vs measured on 7 structures
for m in vgg-small resnet20; do
    run bench/latency_clock.py --model "$m" --rounds 6 --json "$S/clock_$m.json"
    pack
done
uptime | tee -a "$S/machine.txt"
pack
ls -l "$OUT"
