#!/usr/bin/env bash
# Cold and warm figures on an accelerator, each against the PyTorch reference on the same device, within
# about 8 minutes (issue 35): one log to commit.
#
#   bash tools/gpu_check.sh SMOLLM2_GGUF KNOWN_1000_JSON COUNTERFACT_JSON OUT_DIR
#
# 1. tools/bench_trace.py: the one-prompt trace (Eiffel Tower, three kinds), cold (fresh process, no
#    compile cache, compile included) and steady, against the per-cell transformers loop.
# 2. `jaxedit trace --dataset KNOWN_1000_JSON --max-minutes 3`: as many known facts as 3 minutes trace,
#    compile included, with the facts per minute and the programs compiled.
# 3. tools/bench_rome.py: one ROME edit, cold and steady, against the reference ROME steps.
# 4. tools/bench_mass.py --sizes 200 --methods memit: a 200-edit MEMIT batch, cold, against the reference.
#
# OUT_DIR gets gpu_check.log (everything, device named) and the benchmarks' JSON figures.
# SmolLM2's GGUF (98 MB) is larger than one device call carries (64 MiB): split it here
# (`split -b 50000000`), carry the halves, join them on the device (check the sha256) and pass the joined
# path. The data files live in ../shared, outside the working tree: copy the two JSON files into an
# ignored folder of the checkout (e.g. out/data/) and carry it.
#
# Environment: XLA_FLAGS (default `--xla_gpu_autotune_level=0`: GEMM autotuning cost an H200 ~185 s of
# compile for a 0.23 s trace; set XLA_FLAGS= to autotune as XLA does by default).
set -uo pipefail
gguf=${1:?usage: gpu_check.sh SMOLLM2_GGUF KNOWN_1000_JSON COUNTERFACT_JSON OUT_DIR}
known=${2:?usage: gpu_check.sh SMOLLM2_GGUF KNOWN_1000_JSON COUNTERFACT_JSON OUT_DIR}
counterfact=${3:?usage: gpu_check.sh SMOLLM2_GGUF KNOWN_1000_JSON COUNTERFACT_JSON OUT_DIR}
out=${4:?usage: gpu_check.sh SMOLLM2_GGUF KNOWN_1000_JSON COUNTERFACT_JSON OUT_DIR}
mkdir -p "$out"
out=$(realpath "$out")
gguf=$(realpath "$gguf")
known=$(realpath "$known")
counterfact=$(realpath "$counterfact")
log="$out/gpu_check.log"
export XLA_FLAGS=${XLA_FLAGS---xla_gpu_autotune_level=0}
export JAX_DEFAULT_MATMUL_PRECISION=highest # float32 as on the CPU, no TF32
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch shares the GPU
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
unset JAX_COMPILATION_CACHE_DIR # every figure cold: nothing compiled before
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    lscpu | grep "Model name" || true
    python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
    echo "XLA_FLAGS='$XLA_FLAGS'"
} >"$log" 2>&1

step() { # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s), started at ${SECONDS}s" >>"$log"
    timeout "$limit" "$@" 2>&1 | grep -v "GGUF tensors\|Loading weights\|it/s\]" >>"$log"
    echo "== $name: exit ${PIPESTATUS[0]} at ${SECONDS}s" >>"$log"
}

(cd tools && step bench_trace 150 python3 bench_trace.py --gguf "$gguf" --json "$out/bench_trace.json")
step known_1000_sweep 230 python3 -m jaxedit.cli --compile-cache off trace "$gguf" --dataset "$known" \
    --n 1000 --max-minutes 3 --workers 8 --out "$out/sweep"
(cd tools && step bench_rome 60 python3 bench_rome.py --gguf "$gguf" --repeats 1 --json "$out/bench_rome.json")
(cd tools && step bench_mass 110 python3 bench_mass.py --gguf "$gguf" --data "$counterfact" --sizes 200 \
    --methods memit --json "$out/bench_mass.json")
grep -h "^RATIO\|traced \|^compile:" "$log" | tee "$out/summary.txt"
echo "total ${SECONDS}s" | tee -a "$out/summary.txt"
