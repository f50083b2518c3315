"""Second-moment statistics of MLP keys, `C[l] = E[k kᵀ]`, streamed over a corpus and cached (docs/methods.md §3).

Uncentred, float32 accumulation, the mean over every non-padding token. The corpus is streamed
(`jaxedit.data.corpus`: files, saved datasets, `datasets` objects and cached dataset names through
Hugging Face `datasets`), one batch of texts at a time: tokenized, truncated to `max_len` tokens and run
in batches of at most `batch_tokens` tokens through a jitted forward that stops after the deepest
requested layer, so memory does not grow with the corpus. A first pass over the texts (no model, no
tokenizer) hashes and counts them. Results are cached on disk (`$JAXEDIT_CACHE/stats`, default
`~/.cache/jaxedit/stats`, see `jaxedit.io.cache`) under a key made of the fingerprint of every weight, layer,
site, the corpus id, a hash of the texts themselves, their count, maximum length and dtype, as
`<key>.npz` holding the matrix and the metadata (a readable copy of the metadata beside it as
`<key>.json`); an interrupted run resumes from its last checkpoint (`<run>.partial.npz`, keyed by the
run).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxedit.core import decoder
from jaxedit.core import tokens as tok
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.data.corpus import Corpus, open_corpus
from jaxedit.edit.precision import working_params
from jaxedit.errors import InputError
from jaxedit.io.cache import cache_root, digest, load_npz, save_npz
from jaxedit.io.files import atomic_write_bytes
from jaxedit.io.loading import Model

log = logging.getLogger(__name__)


class StatsError(InputError):
    """Statistics that do not belong to the model / layer they are used with, or an unusable corpus."""


@dataclasses.dataclass(frozen=True)
class KeyStats:
    """`E[k kᵀ]` of one layer's MLP keys with where it came from."""

    matrix: np.ndarray  # [F, F] float32
    tokens: int
    meta: dict

    def check(self, model: Model, layer: int, site: str = "mlp_key") -> None:
        """Raise `StatsError` unless these statistics were computed at `layer` and `site` for `model`'s
        weights or for its unedited weights (the statistics of a base model serve its edits, as in
        sequential editing)."""
        got = {k: self.meta.get(k, "mlp_key" if k == "site" else None) for k in ("layer", "site")}
        if got != {"layer": layer, "site": site}:
            raise StatsError(f"statistics are for layer {got['layer']} ({got['site']}), not {layer} ({site})")
        stamp = self.meta.get("fingerprint")
        if stamp != model.base_fingerprint and stamp != model.fingerprint:
            raise StatsError(
                f"statistics were computed on other weights (fingerprint {stamp}, model "
                f"{self.meta.get('model')!r}), not on {model.name} ({model.base_fingerprint})"
            )


def read_corpus(path: str | Path) -> list[str]:
    """Every text of a corpus as one list: what `jaxedit.data.corpus.open_corpus` takes (a `.jsonl` /
    `.json` / `.parquet` / `.arrow` / `.csv` file with a `text` field, a text file of blank-line separated
    blocks, a folder of such files sorted by name, a saved dataset, a cached dataset's name). Holds the
    whole corpus in memory: `key_statistics(corpus=...)` streams it instead."""
    try:
        texts = list(open_corpus(path))
    except InputError as err:
        raise StatsError(str(err)) from err
    if not texts:
        raise StatsError(f"corpus {path} holds no text")
    return texts


def _cache_dir() -> Path:
    return cache_root() / "stats"


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
    x, _, rotary, causal = decoder.prepare(config, params, ids, mask)
    deepest = max(layers) + 1
    stack = jax.tree.map(lambda a: a[:deepest], params["layers"])
    _, taps = decoder.run_layers(config, stack, x, rotary, causal, (site,))
    keys = taps[site]  # [deepest, B, T, F]
    keys = keys[jnp.asarray(layers)].astype(jnp.float32) * mask[None, :, :, None]
    return acc + jnp.einsum("lbtf,lbtg->lfg", keys, keys)


def _hashed(texts: Iterable[str], h: Any) -> Iterator[str]:
    """`texts`, each added to the hash `h` as it passes."""
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
        yield t


def _count_and_hash(texts: Iterable[str], limit: int | None = None) -> tuple[int, str]:
    """How many of `texts` there are (at most `limit`) and a hash of them, in one streamed pass."""
    h = hashlib.sha256()
    n = sum(1 for _ in _hashed(islice(texts, limit), h))
    return n, h.hexdigest()[:16]


def _texts_id(texts: Iterable[str]) -> str:
    return _count_and_hash(texts)[1]


def _in_batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    """`texts` in consecutive lists of `size` (the last one shorter)."""
    it = iter(texts)
    while chunk := list(islice(it, size)):
        yield chunk


def _as_corpus(texts: Sequence[str] | Iterable[str] | None, corpus: Any, text_field: str) -> Corpus:
    """The texts to stream: `corpus` opened (`open_corpus`), or the `texts` given, as they are (a
    one-shot iterator is kept as a list, since the statistics read their texts twice)."""
    if corpus is not None:
        try:
            return open_corpus(corpus, text_field=text_field)
        except InputError as err:
            raise StatsError(str(err)) from err
    given = texts if isinstance(texts, Sequence) else list(texts or ())
    return Corpus("texts", lambda: iter(given))


def key_statistics(
    model: Model,
    layers: Sequence[int],
    texts: Sequence[str] | None = None,
    *,
    corpus: str | Path | Any = None,
    samples: int | None = None,
    max_len: int = 128,
    batch_tokens: int = 2048,
    corpus_id: str | None = None,
    text_field: str = "text",
    cache: bool = True,
    progress: bool = True,
    checkpoint_every: int = 20,
    site: str = "mlp_key",
) -> dict[int, KeyStats]:
    """`E[k kᵀ]` at each layer over the first `samples` texts (each cut to `max_len` tokens).

    Args:
      texts: the texts; or `corpus`, streamed (`jaxedit.data.corpus.open_corpus`): a file `datasets`
        reads (`.jsonl`, `.json`, `.parquet`, `.arrow`, `.csv`, text files of blank-line separated
        blocks), a folder of such files, a folder saved by `save_to_disk`, a `datasets.Dataset` /
        `IterableDataset`, or the name of a dataset in the local Hugging Face cache (offline, never
        downloaded). One of the two is required.
      samples: texts used (the reference code uses 100,000 Wikipedia articles); None: all of them.
        Fewer texts than `samples` is an error, never a silent cut.
      max_len: tokens kept per text.
      batch_tokens: tokens per batch (independent of the model's context length).
      corpus_id: names the corpus in the metadata (default: the resolved path, `hf:NAME`, the dataset's
        fingerprint, or "texts"); the cache key also holds a hash of the texts themselves, so a changed
        corpus is never served from the cache.
      text_field: the field / column holding the texts of a structured corpus.
      cache: read and write the on-disk cache (`$JAXEDIT_CACHE/stats`, see `jaxedit.io.cache`): entries
        keyed by the weights' fingerprint, layer, site, corpus id, texts, `max_len` and dtype; an
        unreadable or mismatched entry is computed again. An interrupted run resumes from its last
        checkpoint (every `checkpoint_every` batches), which is used only if it belongs to this very run.
      progress: show a progress bar counting tokens.
      site: `mlp_key` (the MLP output projection's input, docs/methods.md §3) or `attn_heads` (the attention
        output projection's input, for PMET's attention ablation).

    Returns:
      `{layer: KeyStats}`.
    """
    layers = tuple(sorted({int(x) for x in layers}))
    if not layers or min(layers) < 0 or max(layers) >= model.config.n_layers:
        raise StatsError(f"layers must lie in [0, {model.config.n_layers}), got {list(layers)}")
    if site not in ("mlp_key", "attn_heads"):
        raise StatsError(f"site must be 'mlp_key' or 'attn_heads', got {site!r}")
    if (samples is not None and samples < 1) or max_len < 1 or batch_tokens < 1 or checkpoint_every < 1:
        raise StatsError(
            f"samples, max_len, batch_tokens and checkpoint_every must be positive, got {samples}, "
            f"{max_len}, {batch_tokens} and {checkpoint_every}"
        )
    if (texts is None) == (corpus is None):
        raise StatsError("give either texts or corpus")
    source = _as_corpus(texts, corpus, text_field)
    if corpus is not None:
        corpus_id = corpus_id or source.name
    try:
        n, texts_hash = _count_and_hash(source, samples)  # a first pass: no model, no tokenizer
    except InputError as err:
        raise StatsError(str(err)) from err
    if samples is not None and n < samples:
        where = f"corpus {corpus_id} holds" if corpus_id else "the texts given hold"
        raise StatsError(f"{samples} statistics samples requested but {where} only {n}")
    if n == 0:
        raise StatsError(f"corpus {corpus_id} holds no text" if corpus_id else "no texts for the statistics")
    corpus_id = corpus_id or "texts"
    config = model.config
    dtype = str(jnp.dtype(model.params["layers"]["mlp"]["out"]["kernel"].dtype))
    meta_base = {
        "fingerprint": model.fingerprint, "model": model.source, "corpus": corpus_id,
        "texts": texts_hash, "samples": n, "max_len": max_len, "dtype": dtype, "site": site,
        "statistic": f"uncentred E[k k^T] of {site}, mean over tokens",
    }  # fmt: skip
    keys = {layer: digest({**meta_base, "layer": layer}) for layer in layers}
    out: dict[int, KeyStats] = {}
    if cache:
        for layer in layers:
            entry = load_npz(
                _cache_dir() / f"{keys[layer]}.npz", {**meta_base, "layer": layer}, required=("matrix",)
            )
            if entry is not None:
                arrays, meta = entry
                out[layer] = KeyStats(matrix=arrays["matrix"], tokens=int(meta["tokens"]), meta=meta)
    todo = tuple(layer for layer in layers if layer not in out)
    if not todo:
        return out

    params = working_params(model)
    per_batch = max(1, batch_tokens // max_len)
    width = decoder.site_widths(config)[site]
    run = digest({**meta_base, "layers": list(todo), "per_batch": per_batch})
    partial = _cache_dir() / f"{run}.partial.npz"
    acc = jnp.zeros((len(todo), width, width), jnp.float32)
    done, count = 0, 0
    saved = load_npz(partial, {"run": run}, required=("acc",)) if cache else None
    if saved is not None:
        arrays, meta = saved
        done, count = int(meta["done"]), int(meta["count"])
        if arrays["acc"].shape != acc.shape or not 0 < done < n or count < 0:
            log.warning(
                "jaxedit: ignoring statistics checkpoint %s (its state does not fit this run)", partial
            )
            done, count = 0, 0
        else:
            acc = jnp.asarray(arrays["acc"])
    bar = tqdm(
        initial=count, desc=f"statistics L{','.join(map(str, todo))}", disable=not progress, unit="tok",
        unit_scale=True,
    )  # fmt: skip
    pad = tok.pad_id(model.tokenizer)
    try:
        seen = hashlib.sha256()  # the second pass must read the texts the first one hashed
        stream = _hashed(islice(source, n), seen)
        for _ in islice(stream, done):  # the checkpoint's texts
            pass
        for index, chunk in enumerate(_in_batches(stream, per_batch)):
            ids = [tok.encode_one(model.tokenizer, t)[:max_len] for t in chunk]
            batch, mask = tok.pad(ids + [[0]] * (per_batch - len(ids)), pad, length=max_len, side="right")
            mask[len(ids) :] = 0  # filler rows
            previous = acc
            acc = _accumulate(params, config, todo, site, jnp.asarray(batch), jnp.asarray(mask), acc)
            previous.block_until_ready()  # two batches in flight at most: memory stays bounded
            tokens = int(mask.sum())
            count += tokens
            done += len(chunk)
            bar.update(tokens)
            bar.set_postfix_str(f"{done}/{n} texts", refresh=False)
            if cache and (index + 1) % checkpoint_every == 0 and done < n:
                save_npz(partial, {"acc": np.asarray(acc)}, {"run": run, "done": done, "count": count})
    except InputError as err:
        raise StatsError(str(err)) from err
    finally:
        bar.close()
    if done != n or seen.hexdigest()[:16] != texts_hash:
        raise StatsError(f"corpus {corpus_id} changed while the statistics read it; run them again")
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
            save_npz(_cache_dir() / f"{keys[layer]}.npz", {"matrix": stats.matrix}, stats.meta)
            meta_text = json.dumps(stats.meta, indent=1).encode()  # readable copy beside the matrix
            atomic_write_bytes(_cache_dir() / f"{keys[layer]}.json", meta_text)
        out[layer] = stats
    if cache and partial.exists():
        partial.unlink()
    return out


def model_samples(model: Model, n: int, *, length: int = 64, seed: int = 0) -> list[str]:
    """Texts sampled from the model itself (top-k 40) for when no corpus is given; label them as such."""
    from jaxedit.core.generate import generate_text

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
    """`samples` texts and a corpus id: the corpus's first texts when given (only those are read into
    memory), else texts sampled from the model (the id says so). A corpus with fewer texts than
    `samples` is a `StatsError`."""
    if samples < 1:
        raise StatsError(f"statistics samples must be positive, got {samples}")
    if corpus is not None:
        source = _as_corpus(None, corpus, "text")
        try:
            texts = list(islice(source, samples))
        except InputError as err:
            raise StatsError(str(err)) from err
        if len(texts) < samples:
            raise StatsError(
                f"{samples} statistics samples requested but corpus {corpus} holds only {len(texts)}"
            )
        return texts, source.name
    return model_samples(model, samples), f"model-samples:{samples}:seed0"
