# Sourced by the bench scripts that run on a lent machine's CPU (bench/quiet_*.sh): torch-pruning
# from the carried wheels ($WHEELS) where it is missing, src/ on the path, one thread per
# process, and machine_facts FILE, which writes the CPU, load and torch version there.
if ! "$PY" -c "import torch_pruning" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || echo "WARNING: wheel install failed"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
machine_facts() {
    {
        lscpu | grep -E 'Model name|^CPU\(s\)|Thread|MHz|L3'
        lscpu | grep -o -E 'avx512f|avx512_bf16|avx512_vnni|amx_tile|avx2' | sort -u | tr '\n' ' '
        echo
        uptime
        "$PY" -c "import torch; print('torch', torch.__version__)"
    } >"$1" 2>&1
    cat "$1"
}
