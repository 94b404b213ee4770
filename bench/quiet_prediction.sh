#!/usr/bin/env bash
# Is the latency table's prediction within 10% on a quiet machine, with layers timed in the
# model and with large blocks kept on the heap? (docs/LATENCY.md). Made for a lent GPU
# machine's 16-core CPU (the GPU is not used): bench/latency_clock.py for both models under
# glibc's default malloc and under steady malloc, four processes at once, each pinned to its
# own core with 1 thread. Each run profiles one table with in-model extras and reports, from
# the same measurements, its errors and those of the same table refitted with layers alone.
# Writes ONE tarball, $OUT/quiet_prediction.tgz: clock_{model}_{malloc}.json, the tables
# lut_{model}_{malloc}.json (to price searches run elsewhere), machine.txt, logs.
#   WHEELS=.whl CORES="2 5 8 11" PY=python3 bash bench/quiet_prediction.sh
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
WHEELS=${WHEELS:-.whl} PY=${PY:-python3} CORES=${CORES:-"2 5 8 11"} ROUNDS=${ROUNDS:-6}
OUT=${OUT:-/tmp/quiet_prediction_out} S=/tmp/quiet_prediction
rm -rf "$S" && mkdir -p "$S" "$OUT"
. bench/device_env.sh
machine_facts "$S/machine.txt"
echo "cores $CORES, rounds $ROUNDS" | tee -a "$S/machine.txt"
read -r -a cores <<<"$CORES"
i=0
for m in resnet20 vgg-small; do
    for mode in system steady; do
        flag=() && [ "$mode" = steady ] && flag=(--steady-malloc)
        taskset -c "${cores[$i]}" "$PY" bench/latency_clock.py --model "$m" --rounds "$ROUNDS" \
            ${flag[@]+"${flag[@]}"} --json "$S/clock_${m}_${mode}.json" --lut-out "$S/lut_${m}_${mode}.json" \
            >"$S/log_${m}_${mode}.txt" 2>&1 &
        i=$((i + 1))
    done
done
wait
uptime | tee -a "$S/machine.txt"
grep -h -E '^(resnet20|vgg-small),|within 10%' "$S"/log_*.txt
tar czf "$OUT/quiet_prediction.tgz" -C "$S" .
ls -l "$OUT"
