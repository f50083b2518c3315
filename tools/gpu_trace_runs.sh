#!/usr/bin/env bash
# Causal-tracing figures on an accelerator: the trace benchmark and the three tracing experiments.
#
#   bash tools/gpu_trace_runs.sh SMOLLM2_GGUF OUT_DIR [N_FACTS]
#
# Runs tools/bench_trace.py (jaxedit vs the per-cell transformers reference, both on the GPU, float32
# with TF32 off on both sides) and experiments/trace_{subject_known,severed,relation_known}.py with N_FACTS
# (default 200) correctly predicted facts, prompt shapes bucketed to multiples of 8 and 8 facts traced
# concurrently (XLA compiles the programs of new prompt shapes in parallel on the host's cores). Results
# land in experiments/results/ as usual; logs and a copy of the results go to OUT_DIR.
set -uo pipefail
gguf=${1:?usage: gpu_trace_runs.sh SMOLLM2_GGUF OUT_DIR [N_FACTS]}
out=${2:?usage: gpu_trace_runs.sh SMOLLM2_GGUF OUT_DIR [N_FACTS]}
n=${3:-200}
mkdir -p "$out"
export JAX_DEFAULT_MATMUL_PRECISION=highest  # float32 as on the CPU, no TF32
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # torch shares the GPU in the benchmark
export PYTHONUNBUFFERED=1
common=(--model "$gguf" --n "$n" --bucket 8 --workers 8)

python3 tools/bench_trace.py --gguf "$gguf" 2>&1 | grep -v Warning | tee "$out/bench_trace.txt"
for name in trace_subject_known trace_severed trace_relation_known; do
    python3 "experiments/$name.py" "${common[@]}" >"$out/$name.log" 2>&1
    echo "$name: exit $? after ${SECONDS}s"
done
tar -czf "$out/results.tar.gz" --exclude=.cache experiments/results
