"""`trace`: causal tracing of one fact (docs/methods.md §1; Meng et al. 2022 §2, Liu et al. 2024 §3, Wei et al. 2024 §3) and its result.

`trace(model, prompt, subject=...)` runs the clean prompt, the corrupted prompt (noise on the subject,
the relation tokens, or a given span) and then one compiled restore grid per kind (`schedule.py` plans it, `program.py` runs it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core import tokens as tok
from jaxedit.core.config import ModelConfig
from jaxedit.display import Rendered
from jaxedit.errors import InputError
from jaxedit.io.files import write_output
from jaxedit.io.loading import Model
from jaxedit.runtime.execution import Execution
from jaxedit.runtime.side_by_side import run_side_by_side
from jaxedit.trace import program, schedule
from jaxedit.trace.runs import clean_and_corrupted, make_noise

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 2**20  # residual buffer budget per chunk of noise samples


@dataclasses.dataclass(frozen=True)
class Noise:
    """The corruption of causal tracing (Meng et al., 2022, §2.1): Gaussian noise added to the corrupted
    tokens' embeddings, the same `samples` draws (from `seed`) for every restored cell.

    Attributes:
      scale: the standard deviation: a number, or `"3sigma"`: 3 x the std of the corrupted tokens'
        embedding values over the prompt (or the dataset's prompts), the published rule.
      samples: noise draws averaged per cell.
      seed: the draws' seed.
    """

    scale: str | float = "3sigma"
    samples: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not (
            self.scale == "3sigma" or isinstance(self.scale, int | float)
        ):
            raise InputError(f"noise scale must be '3sigma' or a number, got {self.scale!r}")
        if isinstance(self.scale, int | float) and self.scale < 0:
            raise InputError(f"noise scale must be non-negative, got {self.scale}")
        if type(self.samples) is not int or self.samples < 1:
            raise InputError(f"noise samples must be a positive int, got {self.samples!r}")

    @classmethod
    def of(cls, noise: Noise | str | float) -> Noise:
        """`noise` as a `Noise`: a bare scale (`"3sigma"` or a number) keeps the default samples and seed."""
        return noise if isinstance(noise, Noise) else cls(scale=noise)


@dataclasses.dataclass
class TraceResult(Rendered):
    """Restore grids of one prompt.

    Attributes:
      grids: kind -> `[L, T]` mean probability of the answer with that cell restored (`P_restored`).
      tokens: decoded token labels (T); `corrupted[t]` marks the noised tokens.
      subject_span: `[start, end)` token indices of the subject (None when no subject was given).
      p_clean / p_corrupt: answer probability in the clean run / mean over the corrupted runs.
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    subject_span: tuple[int, int] | None
    corrupted: list[bool]
    corruption: str
    answer: str
    answer_id: int
    p_clean: float
    p_corrupt: float
    grids: dict[str, np.ndarray]
    samples: int
    noise_scale: float
    window: int
    window_convention: str
    sever: str | None
    seed: int
    seconds: float = 0.0

    def effect(self, kind: str) -> np.ndarray:
        """Indirect effect `P_restored - P_corrupt` of every cell, `[L, T]`."""
        return self.grids[kind] - self.p_corrupt

    @property
    def total_effect(self) -> float:
        return self.p_clean - self.p_corrupt

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["grids"] = {k: np.asarray(v).tolist() for k, v in self.grids.items()}
        out["total_effect"] = self.total_effect
        return out

    def save_json(self, path: str | Path) -> Path:
        return write_output(path, json.dumps(self.to_dict(), indent=1).encode())

    def plot(self, path: str | Path | None = None):
        """Heatmaps, one panel per kind: layers across, tokens down, corrupted tokens starred."""
        from jaxedit.trace.plot import plot_trace

        return plot_trace(self, path)

    def _display_fields(self) -> list[tuple[str, str | None, Any]]:
        """Treescope's fields (`treescope.render_to_text(result)`): the prompt and answer, the kinds
        traced, the grid shape (layers x tokens) and the scores (`P_restored`) per kind. Without
        treescope the notebook shows `_repr_png_`'s heatmaps; inside its rendering they are embedded
        under the fields (`_embedded_html`)."""
        shape = tuple(int(n) for n in np.shape(next(iter(self.grids.values())))) if self.grids else ()
        return [
            ("prompt", ".prompt", self.prompt), ("answer", ".answer", self.answer),
            ("kinds", None, tuple(self.grids)), ("shape", None, shape), ("tokens", ".tokens", self.tokens),
            ("subject_span", ".subject_span", self.subject_span), ("p_clean", ".p_clean", self.p_clean),
            ("p_corrupt", ".p_corrupt", self.p_corrupt), ("total_effect", ".total_effect", self.total_effect),
            ("samples", ".samples", self.samples), ("noise_scale", ".noise_scale", self.noise_scale),
            ("window", ".window", self.window), ("sever", ".sever", self.sever),
            ("scores", ".grids", self.grids),
        ]  # fmt: skip

    def _embedded_html(self) -> str:
        import base64

        return f'<img alt="trace heatmaps" src="data:image/png;base64,{base64.b64encode(self._repr_png_()).decode()}">'

    def _repr_png_(self) -> bytes:
        import io

        import matplotlib.pyplot as plt

        fig = self.plot()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()


def answer_token(model: Model, answer: str) -> int:
    """First token of the answer string, with a leading space unless it has one (docs/methods.md §0)."""
    if not answer or not answer.strip():
        raise InputError("answer must be a non-empty string")
    text = answer if answer.startswith(" ") else " " + answer
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0])


def corrupted_tokens(
    model: Model, prompt: str, ids: Sequence[int], subject: str | None, corrupt: str | tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Boolean mask of the tokens to noise and the subject span (docs/methods.md §0 spans).

    `subject`: the subject's tokens. `relation`: every token that is neither subject nor special (BOS).
    `(start, end)`: those token indices.
    """
    n = len(ids)
    span = tok.token_span(model.tokenizer, prompt, subject) if subject is not None else None
    mask = np.zeros(n, bool)
    if isinstance(corrupt, tuple | list):
        start, end = (int(x) for x in corrupt)
        if not 0 <= start < end <= n:
            raise InputError(f"corrupt span {corrupt} is not inside the prompt's {n} tokens")
        mask[start:end] = True
    elif corrupt == "subject":
        if span is None:
            raise InputError("corrupt='subject' needs the subject")
        mask[span[0] : span[1]] = True
    elif corrupt == "relation":
        if span is None:
            raise InputError("corrupt='relation' needs the subject (relation tokens are the others)")
        special = tok.special_positions(model.tokenizer, ids)
        mask[:] = ~np.asarray(special)
        mask[span[0] : span[1]] = False
        if not mask.any():
            raise InputError(f"prompt {prompt!r} has no relation tokens besides subject {subject!r}")
    else:
        raise InputError(f"corrupt must be 'subject', 'relation' or a (start, end) span, got {corrupt!r}")
    return mask, span


def noise_scale_for(
    model: Model, ids_and_masks: Sequence[tuple[Sequence[int], np.ndarray]], noise: str | float
) -> float:
    """The noise standard deviation: a number as given, or `3sigma` = 3 x std of the token-embedding
    values of the corrupted tokens over the prompt set (the published ROME rule)."""
    if isinstance(noise, int | float) and not isinstance(noise, bool):
        if noise < 0:
            raise InputError(f"noise must be non-negative, got {noise}")
        return float(noise)
    if noise not in ("3sigma",):
        raise InputError(f"noise must be '3sigma' or a number, got {noise!r}")
    table = np.asarray(model.params["embed"]["tokens"])
    rows = [table[np.asarray(ids)[mask]] for ids, mask in ids_and_masks]
    return 3.0 * float(np.concatenate(rows).std())


def _bucket(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def sample_chunks(
    config: ModelConfig, samples: int, length: int, live: int, chunk_samples: int | None, threads: int
) -> tuple[int, int, int]:
    """`(groups, n_chunks, chunk)`: how `trace` splits its noise samples.

    Chunks of `chunk` samples (`chunk_samples`, default as many as fit `CHUNK_BYTES` of residual
    buffer), `n_chunks` of them (the last padded with repeats), a multiple of `groups`: the calls run
    side by side (`min(threads, samples)`), each over `n_chunks // groups` consecutive chunks.
    """
    per_sample_bytes = 4 * config.n_layers * live * length * config.d_model  # residual buffer, one sample
    chunk = chunk_samples or max(1, min(samples, CHUNK_BYTES // max(per_sample_bytes, 1)))
    groups = min(threads, samples)
    n_chunks = _bucket(-(-samples // chunk), groups)
    return groups, n_chunks, min(chunk, -(-samples // n_chunks))  # the same chunk count, least padding


def trace(
    model: Model,
    prompt: str,
    *,
    subject: str | None = None,
    corrupt: str | tuple[int, int] = "subject",
    kinds: Sequence[str] = ("hidden", "mlp", "attn"),
    noise: Noise | str | float = Noise(),
    window: int = 10,
    window_convention: str = "code",
    answer: str | None = None,
    sever: str | None = None,
    execution: Execution = Execution(),
) -> TraceResult:
    """Causal trace of one prompt: restore grids for each kind (docs/methods.md §1).

    Args:
      model: a loaded model with a tokenizer.
      prompt: the fact prompt, e.g. "The Eiffel Tower is located in the city of".
      subject: the subject inside the prompt (needed for subject and relation corruption).
      corrupt: `"subject"` (ROME), `"relation"` (Liu et al. 2024, Wei et al. 2024) or a `(start, end)` token span.
      kinds: any of `hidden`, `mlp`, `attn`.
      noise: a `Noise` (scale, samples, seed), or a bare scale (`"3sigma"` or an absolute std) with 10
        samples from seed 0.
      window: layers restored around l for `mlp` / `attn` (`window_convention` `code`: [l-5, l+4]).
      answer: the answer whose first token is read out (default: the model's greedy prediction).
      sever: `mlp`, `attn` or `both`: in the `hidden` grid, pin that sublayer at later layers of the
        restored token to its corrupted value (Meng et al. 2022 appendix, Wei et al. 2024).
      execution: speed and memory settings (`jaxedit.runtime.execution.Execution`: threads, segments, row
        blocks, sample chunks, length buckets); the grids do not depend on them beyond float rounding.

    Returns:
      A `TraceResult`; `params` are untouched.
    """
    if model.tokenizer is None:
        raise InputError(f"model {model.source!r} has no tokenizer")
    config = model.config
    kinds = tuple(kinds)
    for kind in kinds:
        if kind not in schedule.KINDS:
            raise InputError(f"unknown kind {kind!r}; kinds are {', '.join(schedule.KINDS)}")
    if not kinds:
        raise InputError("kinds is empty")
    if not 1 <= window <= config.n_layers:
        raise InputError(f"window must lie in [1, {config.n_layers}] (the model's layers), got {window}")
    if sever not in (None, "mlp", "attn", "both"):
        raise InputError(f"sever must be None, 'mlp', 'attn' or 'both', got {sever!r}")
    noise = Noise.of(noise)
    samples, seed = noise.samples, noise.seed
    ex = execution.resolved()
    bucket = ex.bucket_or(1)
    ids = tok.encode_one(model.tokenizer, prompt)
    if len(ids) > config.max_positions:
        raise InputError(f"prompt of {len(ids)} tokens is longer than the context of {config.max_positions}")
    mask, span = corrupted_tokens(model, prompt, ids, subject, corrupt)
    scale = noise_scale_for(model, [(ids, mask)], noise.scale)
    start_time = time.perf_counter()

    # left-pad to a length bucket; only rows from the first corrupted token on carry cells
    n = len(ids)
    min_length, min_live = ex.pad_to or (0, 0)
    length = min(max(_bucket(n, bucket), min_length), config.max_positions)
    pad = length - n
    first_live = pad + int(np.argmax(mask))
    # rows carrying cells (dead ones included)
    live = min(max(_bucket(length - first_live, bucket), min_live), length)
    padded_ids = np.full(length, tok.pad_id(model.tokenizer), np.int32)
    padded_ids[pad:] = ids
    key_mask = np.zeros(length, bool)
    key_mask[pad:] = True
    padded_corrupt = np.zeros(length, bool)
    padded_corrupt[pad:] = mask
    positions = np.maximum(np.cumsum(key_mask) - 1, 0).astype(np.int32)

    # noise is drawn for the unpadded prompt, so padding never changes which noise a token gets
    noise_values = make_noise(seed, samples, jnp.asarray(mask), config.d_model, scale)
    noise_values = jnp.pad(noise_values, ((0, 0), (pad, 0), (0, 0)))
    if answer is None:
        from jaxedit.core.decoder import forward

        logits = forward(model.params, config, padded_ids[None], key_mask[None]).logits[0, -1]
        answer_id = int(jnp.argmax(logits))
    else:
        answer_id = answer_token(model, answer)
    clean, corrupt_states, p_clean, p_corrupt = clean_and_corrupted(
        model.params,
        config,
        jnp.asarray(padded_ids),
        jnp.asarray(key_mask),
        noise_values,
        jnp.int32(answer_id),
    )
    p_corrupt_mean = float(jnp.mean(p_corrupt))

    groups, n_chunks, chunk = sample_chunks(config, samples, length, live, ex.chunk_samples, ex.threads)
    order = np.arange(n_chunks * chunk) % samples  # pad the last chunk with repeats, dropped later
    chunks = jax.tree.map(lambda a: a[order].reshape(n_chunks, chunk, *a.shape[1:]), corrupt_states)
    per_group = n_chunks // groups
    grouped = [
        jax.tree.map(lambda a, g=g: a[g * per_group : (g + 1) * per_group], chunks) for g in range(groups)
    ]

    plans = {
        kind: schedule.build_plan(
            kind,
            config.n_layers,
            length,
            live,
            chunk,
            window,
            window_convention,
            sever if kind == "hidden" else None,
            ex.segments,
        )
        for kind in kinds
    }

    def grid_call(kind: str, group: dict[str, jax.Array]) -> Callable[[], jax.Array]:
        return lambda: program.grid_program(
            model.params,
            config,
            plans[kind],
            jnp.asarray(key_mask),
            jnp.asarray(positions),
            clean,
            group,
            jnp.int32(answer_id),
            ex.row_block,
        )

    # group-major order: the first calls are of different kinds, so their programs compile side by side
    jobs = [(kind, group) for group in grouped for kind in kinds]
    outputs = run_side_by_side([grid_call(kind, group) for kind, group in jobs], ex.threads)
    grids = {}
    for kind in kinds:
        probs = np.concatenate(
            [np.asarray(out) for (k, _), out in zip(jobs, outputs, strict=True) if k == kind]
        )
        grid = program.grid_from_units(plans[kind], probs, samples, p_corrupt_mean, first_live)
        grids[kind] = grid[:, pad:]
    labels = [model.tokenizer.decode([i]) for i in ids]
    return TraceResult(
        prompt=prompt, tokens=labels, token_ids=[int(i) for i in ids], subject_span=span,
        corrupted=mask.tolist(), corruption=corrupt if isinstance(corrupt, str) else "span",
        answer=model.tokenizer.decode([answer_id]), answer_id=answer_id,
        p_clean=float(p_clean), p_corrupt=p_corrupt_mean, grids=grids,
        samples=samples, noise_scale=scale, window=window, window_convention=window_convention,
        sever=sever, seed=seed, seconds=time.perf_counter() - start_time,
    )  # fmt: skip
