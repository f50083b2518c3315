"""Target optimisation shared by ROME, MEMIT, PMET and RETS (docs/methods.md §4).

For each edit request, find `δ` added to the MLP output of the edited layer at the key token (the last
subject token) so that the model predicts the new object in every context:

    loss = mean_contexts NLL(target | context) + kl_factor · KL(P_edited ‖ P_original) + weight_decay · ‖δ‖ / ‖m0‖²

with the KL term read at the last subject token of `"{subject} is a"` and `m0` the original MLP output at
the key token of the bare prompt. Adam (lr 0.5), the norm clamp `‖δ‖ ≤ clamp · ‖m0‖` after every step,
at most `steps` evaluations, stopping once the loss is below `loss_stop` (as the reference loop does: it
evaluates, stops, or updates).

What the problem's structure saves: layers below the edited one do not see `δ`, so their output is
computed once (no gradient) and the jitted loop runs only the layers from the edited one up; logits are
computed only at the target positions and the KL positions, not over the whole sequence. Many requests
optimise together in one padded batch: the loss is a sum of per-request terms that share no parameters,
so one Adam run over the `[n, D]` matrix equals n separate runs; each request stops on its own (its rows
keep running, its `δ` stops changing).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxedit.core import decoder
from jaxedit.core import interventions as iv
from jaxedit.core import tokens as tok
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.edit.checks import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_fields
from jaxedit.edit.precision import working_params
from jaxedit.edit.requests import Request, as_request, template_fields
from jaxedit.errors import InputError, NumericsError
from jaxedit.io.loading import Model
from jaxedit.runtime.execution import Execution


@dataclasses.dataclass(frozen=True)
class TargetHparams:
    """docs/methods.md §4 defaults (ROME on GPT-2: 20 steps, clamp 4)."""

    steps: int = 20
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp: float = 4.0
    loss_stop: float = 0.05
    kl_prompt: str = "{} is a"
    # what `m0` (the vector δ is added to, and the scale of the clamp and decay) is: the MLP output of
    # the edited layer (ROME), or its residual output `h[l]` (MEMIT / PMET targets, docs/methods.md §6);
    # adding δ to either changes `h[l]` identically
    reference: str = "mlp_out"
    # PMET (docs/methods.md §7): also optimise δa on the attention output (own clamp and decay), and weight the
    # NLL by φ = 1 until every target token is the argmax, then φ = nll_after (0.1), stopping once the KL
    # falls below kl_stop
    # where δ is added and the key read: the last subject token (ROME, MEMIT, PMET) or the last token of the
    # prompt, the last relation token (RETS, docs/methods.md §8); the KL prompt may name `{prompt}` (RETS'
    # reference code: "<prompt> is a") instead of the subject (`{}`)
    key_token: str = "subject"
    attn_delta: bool = False
    attn_clamp: float | None = None  # None: clamp
    attn_weight_decay: float | None = None  # None: weight_decay
    nll_schedule: bool = False
    nll_after: float = 0.1
    kl_stop: float = 0.01

    def __post_init__(self) -> None:
        check_fields(
            self,
            {"steps": AT_LEAST_ONE, "lr": POSITIVE, "kl_factor": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
             "clamp": POSITIVE, "attn_clamp": POSITIVE,
             "attn_weight_decay": NON_NEGATIVE, "nll_after": POSITIVE},
            {"reference": ("mlp_out", "resid_post"), "key_token": ("subject", "last")},
        )  # fmt: skip
        if template_fields(self.kl_prompt) not in ([""], ["prompt"]):
            raise InputError(
                f"TargetHparams.kl_prompt must hold one '{{}}' (the subject) or one '{{prompt}}' (the filled-in "
                f"prompt) and no other placeholder, got {self.kl_prompt!r}"
            )


@dataclasses.dataclass
class Targets:
    """Result of the optimisation for n requests.

    Attributes:
      delta: `[n, D]` the optimised `δ`; `value = m0 + delta` is `v*`.
      m0: `[n, D]` original MLP output (`W k` + bias; `reference="resid_post"`: the layer's residual
        output) at the key token of the bare prompt.
      key: `[n, F]` MLP key at that token (bare prompt); `key_mean`: `[n, F]` mean over the contexts.
      loss: `[n, steps]` loss per evaluation (NaN after the request stopped); `nll`: the final NLL.
      steps: evaluations per request.
      delta_attn: `[n, D]` PMET's δa on the attention output (`attn_delta=True`), else None.
    """

    delta: np.ndarray
    m0: np.ndarray
    key: np.ndarray
    key_mean: np.ndarray
    loss: np.ndarray
    nll: np.ndarray
    steps: np.ndarray
    delta_attn: np.ndarray | None = None

    @property
    def value(self) -> np.ndarray:
        return self.m0 + self.delta

    def select(self, index: Sequence[int] | slice) -> Targets:
        """The targets of some requests (each request's optimisation is independent of the others')."""
        return Targets(**{
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
            for f in dataclasses.fields(self)
        })  # fmt: skip


def target_ids(model: Model, target: str) -> list[int]:
    """Token ids of a target object, with a leading space (docs/methods.md §0); no special tokens."""
    text = target if target.startswith(" ") else " " + target
    ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise InputError(f"target {target!r} has no tokens")
    return ids


class Batch(NamedTuple):
    """Arrays of the padded batch (host arrays from `build_batch`; a pytree, so the jitted steps take it
    whole): per row its request, key position and readout positions."""

    ids: np.ndarray  # [R, T]
    mask: np.ndarray  # [R, T]
    row_request: np.ndarray  # [R]
    key_pos: np.ndarray  # [R]
    is_kl: np.ndarray  # [R] bool
    is_bare: np.ndarray  # [R] bool: the "{}" context of its request
    read_pos: np.ndarray  # [R, M] positions whose next-token distribution is scored
    labels: np.ndarray  # [R, M]
    weights: np.ndarray  # [R, M] 1 / n_target_tokens at real target positions, else 0


def kl_text(kl_prompt: str, request: Request) -> str:
    """The KL prompt of a request: `{prompt}` is the filled-in prompt, `{}` the subject."""
    if "{prompt}" in kl_prompt:
        return kl_prompt.replace("{prompt}", request.text)
    return kl_prompt.format(request.subject)


def build_batch(
    model: Model,
    requests: Sequence[Request],
    templates: Sequence[str],
    kl_prompt: str,
    key_token: str = "subject",
) -> Batch:
    """Rows `context + target[:-1]` for every (request, template), then one KL row per request; the key
    position is the last subject token or (`key_token="last"`) the last token before the target."""
    if key_token not in ("subject", "last"):
        raise InputError(f"key_token must be 'subject' or 'last', got {key_token!r}")
    rows, keys, owners, kl_flags, bare, reads, labels = [], [], [], [], [], [], []
    for index, request in enumerate(requests):
        targets = target_ids(model, request.target)
        for template in templates:
            text = template.format(request.text)
            after = template.index("{}") + request.prompt.index("{}")
            ids = tok.encode_one(model.tokenizer, text)
            _, end = tok.token_span(model.tokenizer, text, request.subject, after=after)
            rows.append(ids + targets[:-1])
            keys.append(end - 1 if key_token == "subject" else len(ids) - 1)
            owners.append(index)
            kl_flags.append(False)
            bare.append(template == "{}")
            reads.append([len(ids) - 1 + j for j in range(len(targets))])
            labels.append(targets)
        kl = kl_text(kl_prompt, request)
        kl_ids = tok.encode_one(model.tokenizer, kl)
        _, end = tok.token_span(model.tokenizer, kl, request.subject)
        key = end - 1 if key_token == "subject" else len(kl_ids) - 1
        rows.append(kl_ids)
        keys.append(key)
        owners.append(index)
        kl_flags.append(True)
        bare.append(False)
        reads.append([key])
        labels.append([0])
    # shape buckets (lengths to 16 tokens, read widths to powers of two): the edits of a benchmark run
    # share a few compiled optimisation loops instead of one per request shape
    length = tok.bucket(max(len(r) for r in rows), 16, model.config.max_positions)
    ids, mask = tok.pad(rows, tok.pad_id(model.tokenizer), side="right", length=length)
    width = tok.power_of_two(max(len(r) for r in reads))
    read_pos = np.zeros((len(rows), width), np.int32)
    label_arr = np.zeros((len(rows), width), np.int32)
    weights = np.zeros((len(rows), width), np.float32)
    for r, (pos, lab, kl) in enumerate(zip(reads, labels, kl_flags, strict=True)):
        read_pos[r, : len(pos)] = pos
        label_arr[r, : len(lab)] = lab
        weights[r, : len(pos)] = 0.0 if kl else 1.0 / len(pos)
    if ids.shape[1] > model.config.max_positions:
        raise InputError(
            f"edit contexts of {ids.shape[1]} tokens exceed the context of {model.config.max_positions}"
        )
    return Batch(
        ids=ids, mask=mask, row_request=np.asarray(owners, np.int32), key_pos=np.asarray(keys, np.int32),
        is_kl=np.asarray(kl_flags), is_bare=np.asarray(bare), read_pos=read_pos, labels=label_arr,
        weights=weights,
    )  # fmt: skip


class Prepass(NamedTuple):
    """What the target loop needs from one pass of the unedited model (independent of the suffix window)."""

    x: jax.Array  # [R, T, D] input of the edited layer
    positions: jax.Array  # [R, T]
    cached_k: jax.Array  # [n_from, R, T, K, E] keys of every layer from the edited one up
    cached_v: jax.Array  # [n_from, R, T, K, E]
    kl_base: jax.Array  # [R, V] original log-distribution at each row's first read (used on KL rows)
    m0: jax.Array  # [n, D] original `hp.reference` output at the key token of the bare prompt
    a0: jax.Array  # [n, D] original attention output there (zeros unless `hp.attn_delta`)
    key: jax.Array  # [n, F] MLP key at the key token of the bare prompt
    key_mean: jax.Array  # [n, F] MLP key averaged over the request's contexts


@functools.partial(jax.jit, static_argnames=("config", "layer", "hp", "n_requests"))
def target_prepass(
    params: Params, config: ModelConfig, layer: int, hp: TargetHparams, n_requests: int, batch: Batch
) -> Prepass:
    """The unedited pass with `δ = 0`: the edited layer's input, every layer's keys / values from the
    edited one up, the original distribution at each row's first read (`batch.read_pos[:, 0]`; the
    batch comes without its other read columns, labels and weights) and `m0` and the keys. Its shapes
    are the batch's rows and token length, not the suffix window or the read width, so requests of a
    new window or target length compile only `target_loop`."""
    ids, mask, row_request, key_pos, is_kl, is_bare = batch[:6]
    first_read = batch.read_pos[:, 0]
    x, positions, rotary, causal = decoder.prepare(config, params, ids, mask)
    below = jax.tree.map(lambda a: a[:layer], params["layers"])
    x, _ = decoder.run_layers(config, below, x, rotary, causal)  # input of the edited layer: fixed
    p_layer = jax.tree.map(lambda a: a[layer], params["layers"])
    above = jax.tree.map(lambda a: a[layer + 1 :], params["layers"])
    rows = jnp.arange(ids.shape[0])
    out0 = decoder.block(config, p_layer, x, rotary, causal, {}, ("mlp_key", "attn_out", hp.reference))
    h0, taps_above = decoder.run_layers(config, above, out0.resid, rotary, causal, ("resid_pre",))
    # only the first read of a row is compared with the original (the KL rows read one position)
    kl_base = jax.nn.log_softmax(decoder.unembed(config, params, h0[rows, first_read]), axis=-1)
    inputs = jnp.concatenate([x[None], taps_above["resid_pre"]])  # [n_from, R, T, D]

    def keys_values(p: Params, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        return decoder.project_keys_values(config, p["attn"], decoder.norm(config, p["ln1"], h), rotary)

    from_layer = jax.tree.map(lambda a: a[layer:], params["layers"])
    cached_k, cached_v = jax.vmap(keys_values)(from_layer, inputs)  # [n_from, R, T, K, E]
    bare_index = jnp.argmax(
        is_bare[None, :] & (row_request[None, :] == jnp.arange(n_requests)[:, None]), axis=1
    )
    m0 = out0.taps[hp.reference][rows, key_pos][bare_index]  # [n, D]
    a0 = out0.taps["attn_out"][rows, key_pos][bare_index] if hp.attn_delta else jnp.zeros_like(m0)
    keys = out0.taps["mlp_key"][rows, key_pos]  # [R, F]
    context = (~is_kl).astype(jnp.float32)
    per_request = jax.ops.segment_sum(context, row_request, n_requests)
    key_mean = jax.ops.segment_sum(keys * context[:, None], row_request, n_requests) / per_request[:, None]
    return Prepass(x, positions, cached_k, cached_v, kl_base, m0, a0, keys[bare_index], key_mean)


@functools.partial(jax.jit, static_argnames=("config", "layer", "hp", "window"))
def target_loop(
    params: Params,
    config: ModelConfig,
    layer: int,
    hp: TargetHparams,
    window: int,
    pre: Prepass,
    batch: Batch,
) -> tuple[jax.Array, ...]:
    """Adam on `δ` (module docstring), recomputing only the `window` tokens from each row's key token on
    through the layers from the edited one up. Returns `δ_mlp, δ_attn, history, nll, steps`."""
    mask, row_request, key_pos, is_kl = batch.mask, batch.row_request, batch.key_pos, batch.is_kl
    read_pos, labels, weights = batch.read_pos, batch.labels, batch.weights
    n_requests = pre.m0.shape[0]
    p_layer = jax.tree.map(lambda a: a[layer], params["layers"])
    above = jax.tree.map(lambda a: a[layer + 1 :], params["layers"])
    x = pre.x
    rows = jnp.arange(x.shape[0])
    t = x.shape[1]
    pad = jnp.zeros((*pre.cached_k.shape[:2], window, *pre.cached_k.shape[3:]), pre.cached_k.dtype)
    cached_k = jnp.concatenate([pre.cached_k, pad], axis=2)  # the suffix is written at T
    cached_v = jnp.concatenate([pre.cached_v, pad], axis=2)

    # δ changes only the key token and the tokens after it: each row recomputes the `window` tokens from
    # its key position on, attending to the cached keys / values of the tokens before it
    offsets = jnp.arange(window)
    index = key_pos[:, None] + offsets  # [R, W]
    last_read = read_pos.max(axis=1)
    valid = index <= last_read[:, None]
    index = jnp.minimum(index, t - 1)
    x_suffix = x[rows[:, None], index]  # [R, W, D]
    rotary_suffix = decoder.rotary_for(config, pre.positions[rows[:, None], index])
    before_key = (jnp.arange(t)[None, :] < key_pos[:, None]) & mask.astype(bool)  # [R, T]
    causal_suffix = (offsets[:, None] >= offsets[None, :])[None] & (
        valid[:, None, :] | jnp.eye(window, dtype=bool)
    )
    suffix_mask = jnp.concatenate(
        [jnp.broadcast_to(before_key[:, None, :], (len(rows), window, t)), causal_suffix], -1
    )
    read_suffix = jnp.maximum(read_pos - key_pos[:, None], 0)  # padded reads (weight 0) clip to 0
    at_key = (offsets == 0).astype(x.dtype)[None, :, None]

    def run(delta: dict[str, jax.Array]) -> jax.Array:
        edit = {
            f"{site}_out": iv.add(at_key * d[row_request][:, None, :]) for site, d in delta.items()
        }  # [R, W, D]
        cache = (cached_k[0], cached_v[0])
        h = decoder.block(config, p_layer, x_suffix, rotary_suffix, suffix_mask, edit, (), cache, t).resid

        def step(h: jax.Array, layer_xs: tuple) -> tuple[jax.Array, None]:
            p, k, v = layer_xs
            return decoder.block(config, p, h, rotary_suffix, suffix_mask, {}, (), (k, v), t).resid, None

        h, _ = jax.lax.scan(step, h, (above, cached_k[1:], cached_v[1:]))
        read = h[rows[:, None], read_suffix]  # [R, M, D]
        return jax.nn.log_softmax(decoder.unembed(config, params, read), axis=-1)  # [R, M, V]

    context = (~is_kl).astype(jnp.float32)
    per_request = jax.ops.segment_sum(context, row_request, n_requests)
    scale = {"mlp": jnp.linalg.norm(pre.m0, axis=-1)}  # [n]: the clamp and decay scale of each δ
    clamp = {"mlp": hp.clamp}
    decay_weight = {"mlp": hp.weight_decay}
    if hp.attn_delta:
        scale["attn"] = jnp.linalg.norm(pre.a0, axis=-1)
        clamp["attn"] = hp.clamp if hp.attn_clamp is None else hp.attn_clamp
        decay_weight["attn"] = hp.weight_decay if hp.attn_weight_decay is None else hp.attn_weight_decay
    zero = {site: jnp.zeros((n_requests, config.d_model), jnp.float32) for site in scale}

    def losses(delta: dict[str, jax.Array], phi: jax.Array) -> tuple[jax.Array, tuple]:
        logp = run(delta)
        picked = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]  # [R, M]
        nll_row = -(picked * weights).sum(-1)  # [R], zero on KL rows
        nll = jax.ops.segment_sum(nll_row * context, row_request, n_requests) / per_request
        kl_row = jnp.sum(jnp.exp(logp[:, 0]) * (logp[:, 0] - pre.kl_base), axis=-1)  # KL(edited ‖ original)
        kl = jax.ops.segment_sum(kl_row * is_kl, row_request, n_requests)
        decay = sum(
            decay_weight[site] * optax.safe_norm(d, 0.0, axis=-1) / scale[site] ** 2  # zero grad at 0
            for site, d in delta.items()
        )
        wrong = jnp.any((jnp.argmax(logp, -1) != labels) & (weights > 0), axis=-1) & ~is_kl  # [R]
        argmax_ok = jax.ops.segment_sum(wrong.astype(jnp.int32), row_request, n_requests) == 0
        return phi * nll + hp.kl_factor * kl + decay, (nll, kl, argmax_ok)

    optimiser = optax.adam(hp.lr)

    def total(delta: dict[str, jax.Array], phi: jax.Array) -> tuple[jax.Array, tuple]:
        loss, aux = losses(delta, phi)
        return loss.sum(), (loss, *aux)

    grad_fn = jax.value_and_grad(total, has_aux=True)
    history0 = jnp.full((n_requests, hp.steps), jnp.nan, jnp.float32)

    def cond(carry):
        step, _, _, _, active, *_ = carry
        return (step < hp.steps) & active.any()

    def body(carry):
        step, delta, state, history, active, steps, last_nll, phi = carry
        (_, (loss, nll, kl, argmax_ok)), grad = grad_fn(delta, phi)
        history = history.at[:, step].set(jnp.where(active, loss, jnp.nan))
        steps = steps + active
        last_nll = jnp.where(active, nll, last_nll)
        done = (loss < hp.loss_stop) | (step >= hp.steps - 1)
        if hp.nll_schedule:
            done = done | ((phi < 1.0) & (kl < hp.kl_stop))
            phi = jnp.where(argmax_ok, hp.nll_after, phi)
        active = active & ~done
        updates, state = optimiser.update(grad, state, delta)
        moved = optax.apply_updates(delta, updates)
        for site in moved:
            limit = clamp[site] * scale[site]
            norm = jnp.linalg.norm(moved[site], axis=-1)
            moved[site] = moved[site] * jnp.minimum(1.0, limit / jnp.maximum(norm, 1e-12))[:, None]
        delta = jax.tree.map(lambda new, old: jnp.where(active[:, None], new, old), moved, delta)
        return step + 1, delta, state, history, active, steps, last_nll, phi

    init = (
        jnp.int32(0), zero, optimiser.init(zero), history0, jnp.ones(n_requests, bool),
        jnp.zeros(n_requests, jnp.int32), jnp.zeros(n_requests, jnp.float32), jnp.ones(n_requests, jnp.float32),
    )  # fmt: skip
    _, delta, _, history, _, steps, nll, _ = jax.lax.while_loop(cond, body, init)
    return delta["mlp"], delta.get("attn", jnp.zeros_like(delta["mlp"])), history, nll, steps


def optimise_batch(
    params: Params,
    config: ModelConfig,
    layer: int,
    n_requests: int,
    hp: TargetHparams,
    window: int,
    batch: Batch,
) -> tuple[jax.Array, ...]:
    """`target_prepass` then `target_loop` on a `Batch`: returns `δ_mlp, δ_attn, m0, key, key_mean,
    history, nll, steps`. Two programs, so that a batch of a new suffix window (same token length)
    compiles only the loop; jit it to plan or count the whole."""
    first_reads = batch._replace(read_pos=batch.read_pos[:, :1], labels=None, weights=None)
    pre = target_prepass(params, config, layer, hp, n_requests, first_reads)
    delta, delta_attn, history, nll, steps = target_loop(params, config, layer, hp, window, pre, batch)
    return delta, delta_attn, pre.m0, pre.key, pre.key_mean, history, nll, steps


def rows_for_budget(config: ModelConfig, layer: int, budget: float, window: int = 16, reads: int = 4) -> int:
    """Batch rows whose Adam step fits `budget` bytes: each row keeps, for the backward pass, about
    `window` tokens of every layer from `layer` up (residual, attention and MLP activations, ~6 D + 3 F
    floats per token) and `reads` float32 distributions over the vocabulary. At least 16 rows."""
    per_token = 6 * config.d_model + 3 * config.d_mlp
    per_row = 4 * (window * (config.n_layers - layer) * per_token + 2 * reads * config.vocab_size)
    return max(16, int(budget // per_row))


def suffix_window(batch: Batch, rows: np.ndarray | slice = slice(None), multiple: int = 4) -> int:
    """Tokens each of `rows` of `batch` recomputes per step (key token to last read token, longest row),
    rounded up to a multiple of `multiple` so that chunks of nearby lengths share one compiled loop
    (`Execution.window_multiple`)."""
    window = int((batch.read_pos[rows].max(axis=1) - batch.key_pos[rows]).max()) + 1
    return -(-window // multiple) * multiple


def chunk_order(batch: Batch, n_requests: int) -> np.ndarray:
    """Requests ordered by the tokens each recomputes (key token to last target token), then by target
    length: chunks cut from this order pad every row to a width close to its own (`tools/target_padding.py`:
    40% fewer recomputed tokens per step on zsRE's 1,037 edits with SmolLM2's PMET settings, 26% on 200
    CounterFact edits)."""
    span = batch.read_pos.max(axis=1) - batch.key_pos + 1  # [R]
    reads = (batch.weights > 0).sum(axis=1)
    window = np.zeros(n_requests, np.int64)
    width = np.zeros(n_requests, np.int64)
    np.maximum.at(window, batch.row_request, span)
    np.maximum.at(width, batch.row_request, reads)
    return np.lexsort((width, window))  # stable: equal requests keep their order


def optimise_targets(
    model: Model,
    requests: Sequence[Request | dict],
    layer: int,
    templates: Sequence[str],
    hp: TargetHparams = TargetHparams(),
    *,
    execution: Execution = Execution(),
) -> Targets:
    """Optimise `δ` for every request at `layer` in jitted loops (see the module docstring).

    Requests are optimised together in chunks of at most `execution.max_rows` batch rows (contexts + 1
    per request), which bounds memory for thousands of edits; requests share no parameters, so chunking
    changes nothing but the memory and the number of loops (a progress bar shows them when there are
    several and `execution.progress`). Chunks are cut from
    `chunk_order` (requests of similar length together, less padding); results come back in the order
    of `requests`. By default the chunk is what
    `execution.memory_budget` bytes of activations allow (`rows_for_budget`).
    """
    if model.tokenizer is None:
        raise InputError(f"model {model.source!r} has no tokenizer")
    if not 0 <= layer < model.config.n_layers:
        raise InputError(f"layer must lie in [0, {model.config.n_layers}), got {layer}")
    if hp.reference not in ("mlp_out", "resid_post"):
        raise InputError(f"reference must be 'mlp_out' or 'resid_post', got {hp.reference!r}")
    if not templates or templates[0] != "{}":
        raise InputError("templates must start with the bare prompt '{}'")
    requests = [as_request(r) for r in requests]
    if not requests:
        raise InputError("no edit requests")
    execution = execution.resolved()
    max_rows = execution.max_rows or rows_for_budget(model.config, layer, execution.memory_budget)
    per_chunk = max(1, max_rows // (len(templates) + 1))
    order = chunk_order(build_batch(model, requests, templates, hp.kl_prompt, hp.key_token), len(requests))
    chunks = [order[i : i + per_chunk] for i in range(0, len(requests), per_chunk)]
    params = working_params(model)
    parts = []
    for chunk in tqdm(
        chunks, desc=f"targets at layer {layer}", disable=not execution.progress or len(chunks) == 1
    ):
        batch = build_batch(model, [requests[i] for i in chunk], templates, hp.kl_prompt, hp.key_token)
        arrays = Batch(*(jnp.asarray(a) for a in batch))
        window = suffix_window(batch, multiple=execution.window_multiple)
        out = optimise_batch(params, model.config, layer, len(chunk), hp, window, arrays)
        parts.append([np.asarray(a) for a in out])
    restore = np.argsort(order)  # back to the order of `requests`
    delta, delta_attn, m0, key, key_mean, history, nll, steps = (
        np.concatenate(p)[restore] for p in zip(*parts, strict=True)
    )
    if not (np.isfinite(delta).all() and np.isfinite(delta_attn).all()):
        raise NumericsError("target optimisation produced non-finite values")
    return Targets(
        delta=delta, m0=m0, key=key, key_mean=key_mean, loss=history, nll=nll, steps=steps,
        delta_attn=delta_attn if hp.attn_delta else None,
    )  # fmt: skip
