"""Context templates for target optimisation: the bare prompt plus prefixes the model writes itself
(docs/methods.md §4).

ROME uses 10 prefixes of 5 tokens and 10 of 10 tokens; MEMIT / PMET 5 of 10. Prefixes are sampled once
per (model, spec, seed) from the unedited model (top-k 5, starting words as in the MEMIT code) and cached
as JSON under `$JAXEDIT_CACHE/contexts` (`jaxedit.io.cache`), keyed by the weights' fingerprint, spec and seed. A template is `"<prefix>. {}"`; the first is `"{}"`.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxedit.core.generate import generate_text
from jaxedit.errors import InputError
from jaxedit.io.cache import cache_root, digest, load_json, save_json
from jaxedit.io.loading import Model

ROME_PREFIXES = ((5, 10), (10, 10))
MEMIT_PREFIXES = ((10, 5),)
STARTS = ("The", "Therefore", "Because", "I", "You")


def _cache_key(model: Model, spec: Sequence[tuple[int, int]], seed: int) -> dict:
    return {"fingerprint": model.fingerprint, "spec": [list(x) for x in spec], "seed": seed}


def context_templates(
    model: Model, spec: Sequence[tuple[int, int]] = ROME_PREFIXES, *, seed: int = 0, cache: bool = True
) -> list[str]:
    """`["{}", "<prefix 1>. {}", ...]` with `count` prefixes of `length` tokens for each `(length, count)`."""
    spec = tuple((int(length), int(count)) for length, count in spec)
    if any(length < 1 or count < 0 for length, count in spec):
        raise InputError(f"prefix spec must hold (length >= 1, count >= 0) pairs, got {spec}")
    key = _cache_key(model, spec, seed)
    path = cache_root() / "contexts" / f"{digest(key)}.json"
    cached = load_json(path, key) if cache else None
    if isinstance(cached, list) and cached and cached[0] == "{}" and all(isinstance(t, str) for t in cached):
        return cached
    templates = ["{}"]
    for length, count in spec:
        if count == 0:
            continue
        starts = [STARTS[i % len(STARTS)] for i in range(count)]
        texts = generate_text(model, starts, max_new_tokens=length - 1, top_k=5, seed=seed + length)
        for start, text in zip(starts, texts, strict=True):
            prefix = (start + text).replace("{", " ").replace("}", " ").strip()
            templates.append(prefix + ". {}")
    if cache:
        save_json(path, templates, key)
    return templates
