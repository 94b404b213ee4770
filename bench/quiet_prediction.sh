#!/usr/bin/env bash
# Is the latency table's prediction within 10% on a quiet machine, with layers timed in the
# model and with large blocks kept on the heap? (docs/LATENCY.md). Made for a lent GPU
# machine's 16-core CPU (the GPU is not used): bench/latency_clock.py for both models under
# glibc's default malloc and under steady malloc, one process at a time (they would share the
# L3 and memory bandwidth that the allocator effect is about), pinned to one core, 1 thread.
# Each run profiles one table with in-model extras and reports, from the same measurements,
# its errors and those of the same table refitted with layers alone.
# Writes ONE tarball, $OUT/quiet_prediction.tgz: clock_{model}_{malloc}.json, the tables
# lut_{model}_{malloc}.json (to price searches run elsewhere), machine.txt, logs.
# Then the structures the latency searches pruned to (rebuilt from docs/results/), steady malloc.
#   WHEELS=.whl CORE=3 ROUNDS=3 PY=python3 bash bench/quiet_prediction.sh   # ~2 min a run on the VM
#   MODES= WHEELS=.whl bash bench/quiet_prediction.sh   # the searched structures only
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
WHEELS=${WHEELS:-.whl} PY=${PY:-python3} CORE=${CORE:-3} ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/tmp/quiet_prediction_out} S=/tmp/quiet_prediction
rm -rf "$S" && mkdir -p "$S" "$OUT"
. bench/device_env.sh
machine_facts "$S/machine.txt"
echo "core $CORE, rounds $ROUNDS" | tee -a "$S/machine.txt"
pack() { tar czf "$S.tgz" -C "$S" . && mv "$S.tgz" "$OUT/quiet_prediction.tgz"; }
MODES=${MODES-system steady}  # MODES= : only the searched models (a second call's share)
for m in resnet20 vgg-small; do
    for mode in $MODES; do
        flag=() && [ "$mode" = steady ] && flag=(--steady-malloc)
        taskset -c "$CORE" "$PY" bench/latency_clock.py --model "$m" --rounds "$ROUNDS" \
            ${flag[@]+"${flag[@]}"} --json "$S/clock_${m}_${mode}.json" \
            --lut-out "$S/lut_${m}_${mode}.json" >"$S/log_${m}_${mode}.txt" 2>&1
        grep -h -E 'within 10%' "$S/log_${m}_${mode}.txt" | sed "s/^/$m $mode: /"
        pack  # what is done survives a time limit
    done
done
# the structures the searches pruned to: "predicted within 10%" is asked of the pruned models
for m in resnet20 vgg-small; do
    taskset -c "$CORE" "$PY" bench/latency_clock.py --model "$m" --rounds "$ROUNDS" \
        --steady-malloc --searched \
        --json "$S/clock_${m}_searched.json" >"$S/log_${m}_searched.txt" 2>&1
    grep -h -E 'within 10%' "$S/log_${m}_searched.txt" | sed "s/^/$m searched: /"
    pack
done
uptime | tee -a "$S/machine.txt"
pack
ls -l "$OUT"
