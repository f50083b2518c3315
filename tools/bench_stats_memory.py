"""Peak memory of key statistics against corpus size: streamed corpora stay flat (issue 37, item 1).

Builds synthetic corpora of `--sizes` texts (random words of the tiny test model's vocabulary, `--words`
words each on average, written as JSON lines in a temporary folder) and computes the key statistics of
one layer of a tiny random Llama over each, every run in a fresh subprocess:

- `stream`: `key_statistics(model, [1], corpus=<file>)`, the corpus streamed through `datasets`;
- `list`: the same file read into a Python list first (`read_corpus`) and passed as `texts=`, for
  contrast: what holding the corpus costs.

Each subprocess loads the model, runs the statistics once on a 32-text corpus (imports, compiles) and
once, streamed, on a warm-up corpus of `--warmup-texts` other texts, then runs the measured statistics
and reports its peak resident set before and after them (`resource.getrusage().ru_maxrss`, the
process's high-water mark), their difference (growth) and tokens per second; then runs them once more
under `tracemalloc` for the peak of the Python heap, where the texts live (a corpus held as a list shows
there in full, while the allocators' free memory left by the warm-up can absorb it in the resident set).

The warm-up is there because the process's allocators grow on their own over the first few hundred
batches of any run and then stay flat: XLA's CPU thread pool and the `datasets` / Arrow reader
interleaved reach a plateau some 30-70 MiB above the first batch's, whatever the corpus (measured on
30,000 texts: flat from batch 200 to 1,875). Without it, a 1,000-text run (63 batches) stops before that
plateau and a 10,000-text run (625 batches) reaches it, which reads as growth with the corpus. For the
same reason the runs use `MALLOC_ARENA_MAX=2` (`--malloc-arenas 0`: glibc's default, an arena per
thread, under which the JAX runtime alone, one batch accumulated again and again, steps up by some 50
MiB over its first ~2,000 batches).

    python tools/bench_stats_memory.py [--sizes 1000 10000] [--words 600] [--max-len 128]

The last lines are `GROWTH <mode> ...`: per corpus size, the resident set's growth and the Python
heap's peak, MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """This process's peak resident set so far, MiB (`ru_maxrss` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_corpus(path: Path, n: int, words: list[str], mean_words: int, seed: int = 0) -> Path:
    """`n` texts of uniformly random length (mean `mean_words`) over `words`, as JSON lines."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for i in range(n):
            length = int(rng.integers(mean_words // 6, 2 * mean_words - mean_words // 6 + 1))
            f.write(json.dumps({"id": i, "text": " ".join(rng.choice(words, length))}) + "\n")
    return path


def child(args: argparse.Namespace) -> None:
    """One measured run in this process; prints one JSON line."""
    import jaxedit
    from jaxedit.edit.stats import key_statistics, read_corpus

    model = jaxedit.load_model(args.model)
    settings = dict(cache=False, progress=False, max_len=args.max_len, batch_tokens=args.batch_tokens)
    key_statistics(model, [1], corpus=args.warmup, samples=32, **settings)  # imports and compiles
    key_statistics(model, [1], corpus=args.warmup, **settings)  # the allocators' own growth

    def measured():
        if args.mode == "stream":
            return key_statistics(model, [1], corpus=args.corpus, **settings)[1]
        return key_statistics(model, [1], read_corpus(args.corpus), **settings)[1]

    baseline = peak_rss_mib()
    start = time.perf_counter()
    stats = measured()
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    tracemalloc.start()  # once more, for the Python heap's peak (tracing slows it down: not timed)
    measured()
    heap = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak, "heap_mib": heap, "tokens": stats.tokens,
                      "texts": stats.meta["samples"], "seconds": seconds}))  # fmt: skip


def run_child(model: Path, corpus: Path, mode: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", "--model", str(model), "--corpus", str(corpus),
               "--warmup", str(corpus.with_name("warmup.jsonl")), "--mode", mode, "--max-len", str(args.max_len),
               "--batch-tokens", str(args.batch_tokens)]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    if args.malloc_arenas:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arenas)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run on {corpus} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--words", type=int, default=600, help="mean words per text")
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--warmup-texts", type=int, default=3000, help="texts of the unmeasured warm-up")
    parser.add_argument(
        "--malloc-arenas", type=int, default=2, help="MALLOC_ARENA_MAX of the runs (0: glibc's default)"
    )
    parser.add_argument("--modes", nargs="+", default=["stream", "list"], choices=["stream", "list"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    sys.path.insert(0, str(ROOT / "tests"))
    from hf_tiny import WORDS, save_tiny

    with tempfile.TemporaryDirectory(prefix="bench-stats-memory-") as tmp:
        tmp_path = Path(tmp)
        model = tmp_path / "tiny_llama"
        save_tiny("llama_gqa_untied", model)
        words = sorted(set(WORDS))
        write_corpus(tmp_path / "warmup.jsonl", args.warmup_texts, words, args.words, seed=1)
        arenas = args.malloc_arenas or "glibc default"
        print(f"tiny llama_gqa_untied (3 layers, d_model 64, d_mlp 96), statistics of layer 1, max_len "
              f"{args.max_len}, batch_tokens {args.batch_tokens}; texts of ~{args.words} random words, jsonl; "
              f"MALLOC_ARENA_MAX {arenas}; warm-up {args.warmup_texts} texts")  # fmt: skip
        print(f"{'mode':>6} {'texts':>7} {'file MiB':>9} {'tokens':>9} {'seconds':>8} {'tokens/s':>9} "
              f"{'baseline MiB':>13} {'peak MiB':>9} {'growth MiB':>11} {'py heap MiB':>12}")  # fmt: skip
        growth: dict[str, list[str]] = {}
        for n in args.sizes:
            corpus = write_corpus(tmp_path / f"corpus_{n}.jsonl", n, words, args.words)
            mib = corpus.stat().st_size / 2**20
            for mode in args.modes:
                r = run_child(model, corpus, mode, args)
                extra = r["peak_mib"] - r["baseline_mib"]
                growth.setdefault(mode, []).append(f"{n}:{extra:.1f}/{r['heap_mib']:.1f}")
                print(f"{mode:>6} {r['texts']:>7} {mib:>9.1f} {r['tokens']:>9} {r['seconds']:>8.2f} "
                      f"{r['tokens'] / r['seconds']:>9.0f} {r['baseline_mib']:>13.1f} {r['peak_mib']:>9.1f} "
                      f"{extra:>11.1f} {r['heap_mib']:>12.1f}", flush=True)  # fmt: skip
        for mode, values in growth.items():
            print(f"GROWTH {mode} texts:rss_growth_MiB/python_heap_peak_MiB {' '.join(values)}")


if __name__ == "__main__":
    main()
