"""Second-moment statistics of MLP keys, `C[l] = E[k kᵀ]`, streamed over a corpus and cached (METHODS.md §3).

Uncentred, float32 accumulation, the mean over every non-padding token. Texts are tokenized, truncated to
`max_len` tokens and run in batches of at most `batch_tokens` tokens through a jitted forward that stops
after the deepest requested layer. Results are cached on disk (`$JAXEDIT_CACHE/stats`, default
`~/.cache/jaxedit/stats`) under a key made of the model fingerprint, layer, corpus id, sample count,
maximum length and dtype, as `<key>.npz` holding the matrix and the metadata (a readable copy of the
metadata beside it as `<key>.json`); an
interrupted run resumes from its last checkpoint (`<key>.partial.npz`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxedit import model as core
from jaxedit import tokens as tok
from jaxedit.checkpoints import atomic_write_bytes
from jaxedit.config import ModelConfig
from jaxedit.layout import Params
from jaxedit.loading import Model


class StatsError(ValueError):
    """Statistics that do not belong to the model / layer they are used with, or an unusable corpus."""


@dataclasses.dataclass(frozen=True)
class KeyStats:
    """`E[k kᵀ]` of one layer's MLP keys with where it came from."""

    matrix: np.ndarray  # [F, F] float32
    tokens: int
    meta: dict

    def check(self, model: Model, layer: int, site: str = "mlp_key") -> None:
        """Raise `StatsError` unless these statistics were computed for `model` at `layer` and `site`."""
        want = {"fingerprint": fingerprint(model), "layer": layer, "site": site}
        got = {k: self.meta.get(k, "mlp_key" if k == "site" else None) for k in want}
        if got != want:
            raise StatsError(f"statistics are for {got}, not for this model and layer {want}")


def fingerprint(model: Model) -> str:
    """Hash of the config and a sample of the unedited weights (embedding and first / last MLP kernels)."""
    params = model.base if model.base is not None else model.params
    h = hashlib.sha256(json.dumps(dataclasses.asdict(model.config), sort_keys=True).encode())
    for array in (
        params["embed"]["tokens"][:64],
        params["layers"]["mlp"]["out"]["kernel"][0, :64],
        params["layers"]["mlp"]["out"]["kernel"][-1, :64],
    ):
        h.update(np.asarray(array, np.float32).tobytes())
    return h.hexdigest()[:16]


def read_corpus(path: str | Path) -> list[str]:
    """Texts of a corpus: a `.jsonl` / `.json` file (`text` fields), a text file (one text per blank-line
    separated block), or a directory of such files (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix != ".md"
        )
        texts = [t for f in files for t in read_corpus(f)]
    elif path.is_file():
        raw = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".jsonl":
            texts = [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
        elif path.suffix == ".json":
            data = json.loads(raw)
            texts = [d["text"] if isinstance(d, dict) else str(d) for d in data]
        else:
            texts = [block.strip() for block in raw.split("\n\n")]
    else:
        raise StatsError(f"corpus {path} does not exist")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise StatsError(f"corpus {path} holds no text")
    return texts


def _cache_dir() -> Path:
    return Path(os.environ.get("JAXEDIT_CACHE", Path.home() / ".cache" / "jaxedit")) / "stats"


@functools.partial(jax.jit, static_argnames=("config", "layers", "site"))
def _accumulate(
    params: Params,
    config: ModelConfig,
    layers: tuple[int, ...],
    site: str,
    ids: jax.Array,
    mask: jax.Array,
    acc: jax.Array,
) -> jax.Array:
    """`acc [n_layers, F, F]` plus the sum of `k kᵀ` of `site` over the real tokens of one batch."""
    positions = core.positions_from_mask(mask)
    x = core.residual_input(config, params, core.embed_tokens(params, ids), positions)
    rotary = core.rotary_for(config, positions)
    causal = core.causal_mask(mask)
    deepest = max(layers) + 1
    stack = jax.tree.map(lambda a: a[:deepest], params["layers"])
    _, taps = core.run_layers(config, stack, x, rotary, causal, (site,))
    keys = taps[site]  # [deepest, B, T, F]
    keys = keys[jnp.asarray(layers)].astype(jnp.float32) * mask[None, :, :, None]
    return acc + jnp.einsum("lbtf,lbtg->lfg", keys, keys)


def _texts_id(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def key_statistics(
    model: Model,
    layers: Sequence[int],
    texts: Sequence[str] | None = None,
    *,
    corpus: str | Path | None = None,
    samples: int = 1000,
    max_len: int = 128,
    batch_tokens: int = 2048,
    corpus_id: str | None = None,
    cache: bool = True,
    progress: bool = True,
    checkpoint_every: int = 20,
    site: str = "mlp_key",
) -> dict[int, KeyStats]:
    """`E[k kᵀ]` at each layer over the first `samples` texts (each cut to `max_len` tokens).

    Args:
      texts: the texts; or `corpus`, a path read with `read_corpus`. One of the two is required.
      samples: texts used (the reference code uses 100,000 Wikipedia articles).
      max_len: tokens kept per text.
      batch_tokens: tokens per batch (independent of the model's context length).
      corpus_id: names the corpus in the cache key and metadata (default: the path, or a hash of texts).
      cache: read and write the on-disk cache.
      site: `mlp_key` (the MLP output projection's input, METHODS.md §3) or `attn_heads` (the attention
        output projection's input, for PMET's attention ablation).

    Returns:
      `{layer: KeyStats}`.
    """
    layers = tuple(sorted({int(x) for x in layers}))
    if not layers or min(layers) < 0 or max(layers) >= model.config.n_layers:
        raise StatsError(f"layers must lie in [0, {model.config.n_layers}), got {list(layers)}")
    if site not in ("mlp_key", "attn_heads"):
        raise StatsError(f"site must be 'mlp_key' or 'attn_heads', got {site!r}")
    if samples < 1 or max_len < 1:
        raise StatsError(f"samples and max_len must be positive, got {samples} and {max_len}")
    if (texts is None) == (corpus is None):
        raise StatsError("give either texts or corpus")
    if corpus is not None:
        corpus_id = corpus_id or str(Path(corpus).resolve())
        texts = read_corpus(corpus)
    texts = list(texts)[:samples]
    if not texts:
        raise StatsError("no texts for the statistics")
    corpus_id = corpus_id or f"texts:{_texts_id(texts)}"
    config = model.config
    dtype = str(jnp.dtype(model.params["layers"]["mlp"]["out"]["kernel"].dtype))
    meta_base = {
        "fingerprint": fingerprint(model), "model": model.source, "corpus": corpus_id, "samples": len(texts),
        "max_len": max_len, "dtype": dtype, "site": site,
        "statistic": f"uncentred E[k k^T] of {site}, mean over tokens",
    }  # fmt: skip
    keys = {
        layer: hashlib.sha256(json.dumps({**meta_base, "layer": layer}, sort_keys=True).encode()).hexdigest()[
            :20
        ]
        for layer in layers
    }
    out: dict[int, KeyStats] = {}
    if cache:
        for layer in layers:
            path = _cache_dir() / f"{keys[layer]}.npz"
            if path.exists():
                out[layer] = _load(path)
    todo = tuple(layer for layer in layers if layer not in out)
    if not todo:
        return out

    ids = [tok.encode_one(model.tokenizer, t)[:max_len] for t in texts]
    per_batch = max(1, batch_tokens // max_len)
    partial = _cache_dir() / f"{keys[todo[0]]}-{'-'.join(map(str, todo))}.partial.npz"
    width = core.site_widths(config)[site]
    acc = jnp.zeros((len(todo), width, width), jnp.float32)
    done, count = 0, 0
    if cache and partial.exists():
        saved = np.load(partial)
        acc, done, count = jnp.asarray(saved["acc"]), int(saved["done"]), int(saved["count"])
    starts = range(done, len(ids), per_batch)
    bar = tqdm(starts, desc=f"statistics L{','.join(map(str, todo))}", disable=not progress, unit="batch")
    for index, start in enumerate(bar):
        chunk = ids[start : start + per_batch]
        batch, mask = tok.pad(
            chunk + [[0]] * (per_batch - len(chunk)),
            tok.pad_id(model.tokenizer),
            length=max_len,
            side="right",
        )
        mask[len(chunk) :] = 0  # filler rows
        acc = _accumulate(model.params, config, todo, site, jnp.asarray(batch), jnp.asarray(mask), acc)
        count += int(mask.sum())
        done = start + len(chunk)
        if cache and (index + 1) % checkpoint_every == 0 and done < len(ids):
            _save(partial, acc=np.asarray(acc), done=done, count=count)
    if count == 0:
        raise StatsError("the texts produced no tokens")
    matrices = np.asarray(acc) / count
    if not np.isfinite(matrices).all():
        raise StatsError("non-finite statistics (overflow in the model's activations?)")
    for i, layer in enumerate(todo):
        stats = KeyStats(
            matrix=matrices[i].astype(np.float32),
            tokens=count,
            meta={**meta_base, "layer": layer, "tokens": count},
        )
        if cache:
            _save(
                _cache_dir() / f"{keys[layer]}.npz",
                matrix=stats.matrix,
                meta=np.asarray(json.dumps(stats.meta)),
            )
            meta_text = json.dumps(stats.meta, indent=1).encode()  # readable copy beside the matrix
            atomic_write_bytes(_cache_dir() / f"{keys[layer]}.json", meta_text)
        out[layer] = stats
    if cache and partial.exists():
        partial.unlink()
    return out


def _save(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path) -> KeyStats:
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return KeyStats(matrix=data["matrix"], tokens=int(meta["tokens"]), meta=meta)


def model_samples(model: Model, n: int, *, length: int = 64, seed: int = 0) -> list[str]:
    """Texts sampled from the model itself (top-k 40) for when no corpus is given; label them as such."""
    from jaxedit.generate import generate_text

    length = max(1, min(length, model.config.max_positions - 8))  # room for the start word in small contexts
    starts = ["The", "In", "A", "It", "When", "This", "There", "After", "One", "Many"]
    prompts = [starts[i % len(starts)] for i in range(n)]
    return [
        p + c
        for p, c in zip(
            prompts, generate_text(model, prompts, max_new_tokens=length, top_k=40, seed=seed), strict=True
        )
    ]


def corpus_or_samples(model: Model, corpus: str | Path | None, samples: int) -> tuple[list[str], str]:
    """Texts and a corpus id: the corpus when given, else model samples (id says so)."""
    if corpus is not None:
        return read_corpus(corpus)[:samples], str(Path(corpus).resolve())
    return model_samples(model, samples), f"model-samples:{samples}:seed0"
