"""A persistent cache of compiled XLA programs on disk, so that a second run skips compiling.

jaxedit's programs are compiled for static shapes (a trace grid per kind and length bucket, an edit
step per request shape); on a CPU the three grid programs of a SmolLM2 trace take longer to compile
than to run. JAX can keep compiled programs on disk, keyed by the program, its shapes, the devices and
the JAX version; this module points that cache at one directory. The `jaxedit` command enables it by
default; in Python, call `enable_compile_cache()` once, before the first compile.

Where the cache goes, first match wins: the `directory` argument (CLI `--compile-cache DIR`), the
`JAXEDIT_COMPILE_CACHE` environment variable, a directory JAX was already given
(`JAX_COMPILATION_CACHE_DIR`; kept with JAX's own settings), then `$XDG_CACHE_HOME/jaxedit/xla`
(`~/.cache/jaxedit/xla`). The value `off` (or an empty `JAXEDIT_COMPILE_CACHE`) turns the cache off.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from jaxedit.errors import InputError

ENV = "JAXEDIT_COMPILE_CACHE"
OFF = ("", "off", "none", "0", "false")
MIN_SECONDS_ENV = "JAXEDIT_COMPILE_CACHE_MIN_SECONDS"
MIN_COMPILE_SECONDS = 1.0  # programs compiled faster than this are not worth a disk entry


def resolve_cache_dir(directory: str | os.PathLike | None = None) -> Path | None:
    """The cache directory the rules of the module docstring pick, or None when the cache is off."""
    if directory is None:
        directory = os.environ.get(ENV)
    if directory is None:
        configured = jax.config.jax_compilation_cache_dir
        if configured:
            return Path(configured)
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "jaxedit" / "xla"
    if str(directory).strip().lower() in OFF:
        return None
    return Path(directory).expanduser()


def enable_compile_cache(
    directory: str | os.PathLike | None = None, min_compile_seconds: float | None = None
) -> Path | None:
    """Keep compiled programs in `directory` (see the module docstring); returns it, None if off.

    Programs that compile faster than `min_compile_seconds` are not stored (default: the
    `JAXEDIT_COMPILE_CACHE_MIN_SECONDS` environment variable, else `MIN_COMPILE_SECONDS`).

    Raises:
      ValueError: the path exists and is not a directory, or cannot be created (nothing is changed).
    """
    if min_compile_seconds is None:
        text = os.environ.get(MIN_SECONDS_ENV, "")
        try:
            min_compile_seconds = float(text) if text else MIN_COMPILE_SECONDS
        except ValueError:
            raise InputError(f"{MIN_SECONDS_ENV} must be a number of seconds, got {text!r}") from None
    if min_compile_seconds < 0:
        raise InputError(f"min_compile_seconds must be >= 0, got {min_compile_seconds}")
    path = resolve_cache_dir(directory)
    if path is not None and str(path) == jax.config.jax_compilation_cache_dir:
        return path  # the cache JAX already has: its settings stay as they are
    if path is None:  # off: also a cache JAX was given through its own variable
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    if path.exists() and not path.is_dir():
        raise InputError(f"compile cache {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create compile cache {path}: {err}") from err
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path
