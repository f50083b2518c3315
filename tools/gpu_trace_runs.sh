#!/usr/bin/env bash
# Causal-tracing experiments on an accelerator, each averaging as many known facts as fit in the time.
#
#   bash tools/gpu_trace_runs.sh SMOLLM2_GGUF OUT_DIR [DEADLINE_SECONDS]
#
# Runs experiments/trace_{subject_known,relation_known,severed}.py at the same time (one process each:
# XLA compiles their grid programs in parallel on the host's cores, and tracing a fact takes the GPU a
# fraction of a second), each asking for N known facts of known_1000.json (default 1000: all it knows)
# with a time budget (`--max-minutes`) that ends ~60 s before DEADLINE_SECONDS (default 570) for model
# loading and writing; each averages the facts traced by then. Results land in experiments/results/ as
# usual; OUT_DIR gets at most five files: results.tar.gz, trace_cache.tar.gz (the per-fact traces:
# unpack it in the repository root and a later run resumes from them), logs.tar.gz, summary.txt and, with
# BENCH=1, bench_trace.txt.
#
# Environment:
#   BENCH=1   first run tools/bench_trace.py (jaxedit vs the per-cell transformers reference, both on
#             the GPU), capped at a third of the time; its H200 figures are already in
#             experiments/results/bench_trace_h200.log, so the default spends the time on facts.
#   N         known facts asked for per experiment (default 1000).
#   SHAPES    padded prompt shapes per experiment (default 2: the known facts grouped by length into two
#             shapes, each kind compiling two grid programs; on SmolLM2's known facts one shape for all
#             does 2.1x (subject) and 3.4x (relation) the work of two: `python tools/trace_padding.py`).
#   XLA_FLAGS default `--xla_gpu_autotune_level=0`. An H200 spent ~185 s compiling the three grid
#             programs of bench_trace with autotuning on (steady state 0.23 s per fact); compile time,
#             not tracing, bounds how many facts fit, so the default skips GEMM autotuning (cuBLAS
#             heuristics instead). Set XLA_FLAGS= (empty) to autotune as XLA does by default.
#
# SmolLM2's Q4_1 GGUF (98 MB) is larger than one device call may carry (64 MiB): split it here
# (`split -b 50000000`), carry one half per call, copy it to /tmp there, and join the halves (check the
# sha256) before calling this script. JAX_COMPILATION_CACHE_DIR keeps compiled programs for a rerun on
# the same machine.
set -uo pipefail
gguf=${1:?usage: gpu_trace_runs.sh SMOLLM2_GGUF OUT_DIR [DEADLINE_SECONDS]}
out=${2:?usage: gpu_trace_runs.sh SMOLLM2_GGUF OUT_DIR [DEADLINE_SECONDS]}
deadline=${3:-570}
n=${N:-1000}
shapes=${SHAPES:-2}
mkdir -p "$out"
logs=$(mktemp -d)
export XLA_FLAGS=${XLA_FLAGS---xla_gpu_autotune_level=0}
export JAX_DEFAULT_MATMUL_PRECISION=highest # float32 as on the CPU, no TF32
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes (and torch in the benchmark) share the GPU
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} # jaxedit from this checkout
export JAX_LOG_COMPILES=1 # each compile and its time, in the logs
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxedit-xla-cache}
echo "XLA_FLAGS='$XLA_FLAGS', N=$n, SHAPES=$shapes, deadline ${deadline}s" | tee "$out/summary.txt"

if [ "${BENCH:-0}" = 1 ]; then
    timeout $((deadline / 3)) python3 tools/bench_trace.py --gguf "$gguf" >"$logs/bench_trace.log" 2>&1
    echo "bench_trace: exit $? after ${SECONDS}s" | tee -a "$out/summary.txt"
    grep -v "^Finished \|^Compiling \|Warning\|GGUF\|Loading weights" "$logs/bench_trace.log" >"$out/bench_trace.txt"
fi

minutes=$(python3 -c "print(round(max(0.0, $deadline - $SECONDS - 60) / 60, 2))")
echo "experiments: --n $n --max-minutes $minutes, started at ${SECONDS}s" | tee -a "$out/summary.txt"
pids=()
for name in trace_subject_known trace_relation_known trace_severed; do
    timeout $((deadline - SECONDS - 10)) python3 "experiments/$name.py" --model "$gguf" --n "$n" \
        --bucket 8 --shapes "$shapes" --workers 8 --max-minutes "$minutes" >"$logs/$name.log" 2>&1 &
    pids+=($!)
done
for i in 0 1 2; do
    wait "${pids[$i]}"
    echo "process $i: exit $? at ${SECONDS}s" | tee -a "$out/summary.txt"
done
for name in trace_subject_known trace_relation_known trace_severed; do
    grep -h "tracing [0-9]* facts\|time budget\|Run time\|run time" "$logs/$name.log" | sed "s/^/$name: /" |
        tee -a "$out/summary.txt"
done
tar -czf "$out/results.tar.gz" experiments/results/trace_*.*
tar -czf "$out/trace_cache.tar.gz" experiments/results/.cache/trace_* 2>/dev/null
tar -czf "$out/logs.tar.gz" -C "$logs" .
ls -la "$out"
