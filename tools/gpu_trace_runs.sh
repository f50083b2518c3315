#!/usr/bin/env bash
# Causal-tracing figures on an accelerator: the trace benchmark, then the three tracing experiments
# sized to what fits in the time left.
#
#   bash tools/gpu_trace_runs.sh SMOLLM2_GGUF OUT_DIR [DEADLINE_SECONDS]
#
# Runs tools/bench_trace.py (jaxedit vs the per-cell transformers reference, both on the GPU, float32
# with TF32 off on both sides), reads its steady-state seconds per traced fact, and gives each of
# experiments/trace_{subject_known,severed,relation_known}.py as many correctly predicted facts as a
# third of the remaining time allows (at least 50, the CPU runs' size: an experiment that cannot reach
# that is skipped). Prompt shapes are bucketed to multiples of 8 and 8 facts traced concurrently (XLA
# compiles new shapes in parallel on the host's cores). Results land in experiments/results/ as usual;
# logs, the benchmark output and a tarball of the results go to OUT_DIR. Everything stops before
# DEADLINE_SECONDS (default 570).
#
# SmolLM2's Q4_1 GGUF (98 MB) is larger than one device call may carry (64 MiB): split it here
# (`split -b 50000000`), carry one half per call, copy it to /tmp there, and join the halves
# (check the sha256) before calling this script. JAX_COMPILATION_CACHE_DIR keeps compiled programs for
# a rerun on the same machine.
set -uo pipefail
gguf=${1:?usage: gpu_trace_runs.sh SMOLLM2_GGUF OUT_DIR [DEADLINE_SECONDS]}
out=${2:?usage: gpu_trace_runs.sh SMOLLM2_GGUF OUT_DIR [DEADLINE_SECONDS]}
deadline=${3:-570}
mkdir -p "$out"
export JAX_DEFAULT_MATMUL_PRECISION=highest # float32 as on the CPU, no TF32
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch shares the GPU in the benchmark
export PYTHONUNBUFFERED=1
export JAX_LOG_COMPILES=1 # each compile and its time, in the logs
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxedit-xla-cache}

timeout $((deadline / 2)) python3 tools/bench_trace.py --gguf "$gguf" >"$out/bench_trace.log" 2>&1
echo "bench_trace: exit $? after ${SECONDS}s"
grep -v "^Finished \|^Compiling \|Warning\|GGUF\|Loading weights" "$out/bench_trace.log" | tee "$out/bench_trace.txt"
steady=$(awk '/steady state/ {print $(NF-1)}' "$out/bench_trace.txt")
if [ -z "$steady" ]; then
    echo "the benchmark did not finish: no experiments"
    exit 1
fi

names=(trace_subject_known trace_severed trace_relation_known)
for i in 0 1 2; do
    name=${names[$i]}
    left=$((deadline - SECONDS - 15))
    share=$((left / (3 - i)))
    # start-up, filtering and compiling one grid program per kind (each 1-3 min on an H200, compiled
    # concurrently by the workers) take ~240 s; a relation-corrupted or severed fact costs up to 2x
    # the benchmark's subject-corrupted one
    n=$(python3 -c "print(int(max(0, $share - 240) / (2 * $steady)))")
    if [ "$n" -lt 50 ]; then
        echo "$name: skipped ($share s left for it: $n facts)"
        continue
    fi
    timeout "$left" python3 "experiments/$name.py" --model "$gguf" --n "$n" --bucket 8 --workers 8 \
        >"$out/$name.log" 2>&1
    echo "$name: --n $n, exit $? after ${SECONDS}s"
done
tar -czf "$out/results.tar.gz" --exclude=.cache experiments/results
tar -czf "$out/logs.tar.gz" -C "$out" --exclude='*.tar.gz' .
