"""The persistent compile cache: where it goes, and a second process loading what the first compiled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import pytest
from conftest import subprocess_env

from jaxedit import cli
from jaxedit.runtime import compile_cache

PROGRAM = """
import sys
import jax, jax.numpy as jnp
from jaxedit.runtime.compile_cache import enable_compile_cache

hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
)
print("dir", enable_compile_cache(sys.argv[1], min_compile_seconds=0))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print("value", float(f(jnp.arange(12.0).reshape(3, 4))))
print("hits", len(hits))
"""


def run_program(directory: Path) -> dict[str, str]:
    env = subprocess_env()
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(directory)], env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in out.strip().splitlines())


def test_a_second_process_loads_the_compiled_program(tmp_path) -> None:
    cache = tmp_path / "nested" / "cache"
    first = run_program(cache)
    assert first["dir"] == str(cache) and first["hits"] == "0"
    assert any(cache.iterdir())  # the compiled program was written
    second = run_program(cache)
    assert int(second["hits"]) >= 1 and second["value"] == first["value"]


def test_cache_directory_rules(tmp_path, monkeypatch) -> None:
    configured = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv("JAXEDIT_COMPILE_CACHE", str(tmp_path / "env"))
        assert compile_cache.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
        assert compile_cache.resolve_cache_dir() == tmp_path / "env"
        assert compile_cache.resolve_cache_dir("off") is None
        monkeypatch.setenv("JAXEDIT_COMPILE_CACHE", "")
        assert compile_cache.resolve_cache_dir() is None
        monkeypatch.delenv("JAXEDIT_COMPILE_CACHE")
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
        assert compile_cache.resolve_cache_dir() == tmp_path / "jax"  # a directory JAX was given
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert compile_cache.resolve_cache_dir() == tmp_path / "xdg" / "jaxedit" / "xla"
    finally:
        jax.config.update("jax_compilation_cache_dir", configured)


def test_a_cache_jax_was_given_keeps_its_settings(tmp_path, monkeypatch) -> None:
    configured = jax.config.jax_compilation_cache_dir
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    monkeypatch.delenv("JAXEDIT_COMPILE_CACHE", raising=False)
    try:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.25)
        assert compile_cache.enable_compile_cache() == tmp_path / "jax"
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.25
    finally:
        jax.config.update("jax_compilation_cache_dir", configured)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)


def test_a_file_in_the_way_is_a_clear_error_and_changes_nothing(tmp_path) -> None:
    configured = jax.config.jax_compilation_cache_dir
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="not a directory"):
        compile_cache.enable_compile_cache(blocker)
    with pytest.raises(ValueError, match="min_compile_seconds"):
        compile_cache.enable_compile_cache(tmp_path / "other", min_compile_seconds=-1)
    assert jax.config.jax_compilation_cache_dir == configured
    assert not (tmp_path / "other").exists()


def test_cli_passes_its_option_to_the_cache(tiny_dirs, tmp_path, monkeypatch, capsys) -> None:
    seen = []
    monkeypatch.setattr(compile_cache, "enable_compile_cache", lambda directory: seen.append(directory))
    assert cli.main(["--compile-cache", str(tmp_path), "info", str(tiny_dirs["gpt2"])]) == 0
    assert cli.main(["info", str(tiny_dirs["gpt2"])]) == 0
    assert seen == [str(tmp_path), None]
    assert "gpt2" in capsys.readouterr().out


def test_cli_runs_without_the_cache_when_the_default_place_is_unusable(
    tiny_dirs, tmp_path, monkeypatch, capsys
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    configured = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("JAXEDIT_COMPILE_CACHE", str(blocker))  # the default the CLI resolves to
    assert cli.main(["info", str(tiny_dirs["gpt2"])]) == 0
    assert "gpt2" in capsys.readouterr().out
    assert jax.config.jax_compilation_cache_dir == configured
    # a directory given on the command line that cannot be used is an error
    assert cli.main(["--compile-cache", str(blocker), "info", str(tiny_dirs["gpt2"])]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess of tens of seconds: the second stage
def test_a_second_process_traces_without_compiling(tiny_dirs, tmp_path) -> None:
    """The same small trace in two fresh processes sharing one cache: the second compiles nothing."""
    import json
    import re

    env = dict(subprocess_env(), JAXEDIT_COMPILE_CACHE_MIN_SECONDS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    counts, grids = [], []
    for run in ("first", "second"):
        out = subprocess.run(
            [sys.executable, "-m", "jaxedit.cli", "--compile-cache", str(tmp_path / "xla"), "trace",
             str(tiny_dirs["llama_gqa_untied"]), "--prompt", "the eiffel tower is in the city of", "--subject",
             "the eiffel tower", "--kinds", "hidden,mlp", "--samples", "2", "--window", "2", "--out",
             str(tmp_path / run)],
            env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        compiled, loaded = re.search(r"compile: (\d+) programs compiled .* (\d+) loaded", out).groups()
        counts.append((int(compiled), int(loaded)))
        grids.append(json.loads((tmp_path / run / "trace.json").read_text())["grids"])
    assert counts[0][0] > 0 and counts[1] == (0, counts[0][0] + counts[0][1])
    assert grids[0] == grids[1]
