"""iReVa: initialise and retrofit key-value adaptor neurons for traceable editing (docs/methods.md §9, iReVa 2024).

For each fact `(x, y)` with answer tokens `t0..tm-1`, one neuron per pair `(x ⊕ t<k, tk)` (paper §5.4,
App. 9.5) is added to the MLP of one layer (default: the second-to-last, as the paper's layer 47 of 48):

- **initialise** (paper §4.1, App. 9.1): key `k0 = ĩ`, the normalised MLP input at the pair's last token;
  value `v0` = the unembedding row of `tk`;
- **retrofit** (paper §4.2, Alg. 1): Adam (lr 5e-2, 5 steps) on `L_edit + a·L_rec + b·L_irr` with
  `L_edit = −log P(tk | x ⊕ t<k)`, `L_rec = ((k0 − k)ᵀ ĩ)²`, and `L_irr = mean relu(score(k, ĩ_out) − θ)`
  over out-of-scope prompts built as App. 9.4 describes: texts the model samples from its BOS token and
  from the fact's subject, and other facts' inputs of the same batch (the printed sign of eq. 10 is
  wrong; docs/methods.md §9).

The gate at inference is `jaxedit.edit.gate` (top-1 over active neurons, `act(score − θ)`, scale α).

Not in the paper, off by default (`exclusive`): after the retrofit, each neuron's firing threshold is
raised to just above the highest score it reaches on the inputs of the batch's other facts (its floor,
`max(θ, floor)` gates it). Then no neuron fires on another fact's edit input, so withdrawing a fact
returns those inputs to the base model rather than to a neighbour's neuron (the collisions that keep
withdrawal Consistency down on zsRE, `experiments/ireva_withdrawal.py`), at the price of neurons that
stop firing on paraphrases scoring below their floor.

Training runs per neuron with max-pooling excluded (paper §4.3) and only this neuron trainable, against
the model as it is before the batch; the neurons of a batch are independent, so they retrofit together:
one Adam over the `[n, D]` keys and values equals n separate runs. What the problem's structure saves:
the neuron acts at layer l on the last token only, so layers up to l run once (no gradient) and each
Adam step runs only the layers above l on the cached layer-l states.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxedit.core import decoder
from jaxedit.core import tokens as tok
from jaxedit.core.config import ModelConfig
from jaxedit.core.generate import generate
from jaxedit.core.layout import Params
from jaxedit.edit import gate
from jaxedit.edit.adaptors import AdaptorEdit, CapacityError, adaptor_edits, used_slots
from jaxedit.edit.checks import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_fields
from jaxedit.edit.hparams import build, packaged_file, read_hparams
from jaxedit.edit.precision import working_params
from jaxedit.edit.reads import last_token_taps
from jaxedit.edit.requests import Request, as_request
from jaxedit.edit.targets import target_ids
from jaxedit.errors import InputError
from jaxedit.io.loading import Model

# the lower bound of every numeric iReVa setting (`check_fields`)
HPARAM_RANGES = {
    "layer": NON_NEGATIVE, "alpha": POSITIVE, "steps": NON_NEGATIVE, "lr": POSITIVE, "rec_weight": NON_NEGATIVE,
    "irr_weight": NON_NEGATIVE, "random_prompts": NON_NEGATIVE, "subject_prompts": NON_NEGATIVE,
    "other_prompts": NON_NEGATIVE, "sample_tokens": AT_LEAST_ONE, "exclusive_margin": NON_NEGATIVE,
    "max_neurons": AT_LEAST_ONE, "chunk": AT_LEAST_ONE,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class IrevaHparams:
    """docs/methods.md §9 defaults (iReVa 2024 §5.4 on zsRE: 5 Adam steps at lr 5e-2, a = b = 1e-3, 2 + 2 + 6
    out-of-scope prompts), with the gate (normalisation, score, α, θ) chosen by
    `experiments/ireva_calibration.py` on SmolLM2 (the paper's α 0.2 and θ 0.75 go with GPT-2 XL's
    unnormalised scores: `hparams/ireva/gpt2-48.json`).

    Attributes:
      layer: layer whose MLP gets the neurons (None: the second-to-last).
      theta, alpha: the gate's margin θ and scale α.
      normalise, score: how `ĩ` is formed and compared with keys (`jaxedit.edit.gate`).
      retrofit: run the Adam retrofit (False: initialisation only).
      steps, lr, rec_weight (a), irr_weight (b): the retrofit.
      random_prompts, subject_prompts, other_prompts: out-of-scope prompts per fact (App. 9.4: 2, 2, 6);
      sample_tokens: length of the sampled ones.
      exclusive: raise each neuron's threshold above its scores on the other facts' inputs of the batch,
        plus `exclusive_margin` (score units; it absorbs the float differences between the batched
        edit-time inputs and later forwards); see the module doc. This batch only: neurons of earlier
        edits keep their thresholds, and new ones are not raised against earlier facts.
      max_neurons: a limit on the model's adaptor neurons (None: none); passing it is an error.
      chunk: neurons retrofitted per jitted call (bounds memory).
    """

    layer: int | None = None
    theta: float = 0.65
    alpha: float = 300.0
    normalise: str = "center"
    score: str = "cosine"
    retrofit: bool = True
    steps: int = 5
    lr: float = 5e-2
    rec_weight: float = 1e-3
    irr_weight: float = 1e-3
    random_prompts: int = 2
    subject_prompts: int = 2
    other_prompts: int = 6
    sample_tokens: int = 10
    exclusive: bool = False
    exclusive_margin: float = 0.01
    max_neurons: int | None = None
    chunk: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, HPARAM_RANGES, {"normalise": gate.NORMALISATIONS, "score": gate.SCORES})

    def resolve_layer(self, config: ModelConfig) -> int:
        layer = max(config.n_layers - 2, 0) if self.layer is None else self.layer
        if not 0 <= layer < config.n_layers:
            raise InputError(f"iReVa layer {layer} is outside the model's {config.n_layers} layers")
        return layer


def default_hparams(model: Model, path: str | Path | None = None) -> IrevaHparams:
    """Settings from `path`, else the packaged file for the model (`hparams/ireva/<family>-<layers>.json`:
    the paper's GPT-2 XL settings, the calibrated ones for SmolLM2), else the class defaults."""
    file = path or packaged_file("ireva", model.config)
    return build(IrevaHparams, read_hparams(file)) if file is not None else IrevaHparams()


@dataclasses.dataclass(frozen=True)
class Pairs:
    """The `(x ⊕ t<k, tk)` pairs of a batch of facts."""

    rows: list[list[int]]  # token ids of each pair's input
    labels: np.ndarray  # [n] the token each pair must produce
    owner: np.ndarray  # [n] fact index
    token: np.ndarray  # [n] answer-token index


def answer_pairs(model: Model, requests: Sequence[Request]) -> Pairs:
    """One pair per answer token of each request (paper App. 9.5)."""
    rows, labels, owner, token = [], [], [], []
    for index, request in enumerate(requests):
        prompt = tok.encode_one(model.tokenizer, request.text)
        try:
            answer = target_ids(model, request.target)
        except InputError as err:
            raise InputError(f"fact {index} ({request.text!r}): {err}") from None
        for k, label in enumerate(answer):
            rows.append(prompt + answer[:k])
            labels.append(label)
            owner.append(index)
            token.append(k)
    longest = max(len(r) for r in rows)
    if longest > model.config.max_positions:
        raise InputError(
            f"an edit input of {longest} tokens exceeds the context of {model.config.max_positions}"
        )
    return Pairs(rows, np.asarray(labels, np.int32), np.asarray(owner, np.int32), np.asarray(token, np.int32))


def unembedding_rows(params: Params, config: ModelConfig, ids: np.ndarray) -> np.ndarray:
    """`[n, D]` the output-embedding vectors of tokens `ids` (paper App. 9.1: `v0 = W[:, y]`)."""
    if config.tie_embeddings:
        return np.array(params["embed"]["tokens"][ids], np.float32)
    return np.array(params["unembed"]["kernel"][:, ids].T, np.float32)


@functools.partial(jax.jit, static_argnames=("config", "layer"))
def _layer_states(
    params: Params, config: ModelConfig, layer: int, ids: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Residual output of `layer` `[B, T, D]` (with the model's own adaptor) and its MLP input at each
    row's last real token `[B, D]`."""
    x, _, rotary, attend = decoder.prepare(config, params, ids, mask)
    below = jax.tree.map(lambda a: a[:layer], params["layers"])
    x, _ = decoder.run_layers(config, below, x, rotary, attend)
    last = decoder.last_positions(mask)
    extra = decoder.mlp_extra_at(params, jnp.int32(layer), last)  # the model's own adaptor, if any
    here = jax.tree.map(lambda a: a[layer], params["layers"])
    out = decoder.block(config, here, x, rotary, attend, {}, ("mlp_in",), mlp_extra=extra)
    rows = jnp.arange(ids.shape[0])
    return out.resid, out.taps["mlp_in"][rows, last]


def last_inputs(model: Model, texts: Sequence[str], layer: int) -> np.ndarray:
    """`[n, D]` MLP inputs of `layer` at the last token of each text (unnormalised)."""
    return last_token_taps(model, layer, texts, "mlp_in")


def sample_texts(model: Model, prompts: Sequence[Sequence[int]], hp: IrevaHparams, seed: int) -> list[str]:
    """Texts the model writes (top-50 sampling, `sample_tokens` new tokens) after each prompt, prompt
    included, special tokens dropped."""
    texts = []
    for first in range(0, len(prompts), 256):
        chunk = [list(p) for p in prompts[first : first + 256]]
        ids, mask = tok.pad(chunk, tok.pad_id(model.tokenizer), side="left")
        new = generate(
            model.params,
            model.config,
            ids,
            mask,
            max_new_tokens=hp.sample_tokens,
            top_k=50,
            seed=seed + first,
        )
        for p, n in zip(chunk, new, strict=True):
            texts.append(model.tokenizer.decode(p + list(n), skip_special_tokens=True))
    return texts


def random_texts(model: Model, count: int, hp: IrevaHparams) -> list[str]:
    """`count` texts sampled from the model's BOS token (its EOS, else its pad token, when it has none;
    paper App. 9.4 a)."""
    tokenizer = model.tokenizer
    start = next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None), None)
    start = tok.pad_id(tokenizer) if start is None else start
    if count == 0:
        return []
    return [t for t in sample_texts(model, [[int(start)]] * count, hp, hp.seed) if t.strip()]


def input_mean(model: Model, layer: int, texts: Sequence[str]) -> np.ndarray:
    """`μ` of the `center` normalisation: the mean MLP input of `layer` at the last token of `texts`."""
    if not texts:
        raise InputError("no texts to estimate the mean MLP input from")
    return last_inputs(model, texts, layer).mean(0)


def out_of_scope_prompts(
    model: Model, requests: Sequence[Request], hp: IrevaHparams, pool: Sequence[str]
) -> list[list[str]]:
    """Per fact, the out-of-scope inputs of `L_irr` (paper App. 9.4): `random_prompts` texts drawn from
    `pool` (texts sampled from BOS), `subject_prompts` continuations the model samples from the fact's
    subject, and `other_prompts` inputs of other facts in the batch."""
    rng = np.random.default_rng(hp.seed)
    subject_texts: list[str] = []
    if hp.subject_prompts:
        subjects = [
            tok.encode_one(model.tokenizer, r.subject) for r in requests for _ in range(hp.subject_prompts)
        ]
        subject_texts = sample_texts(model, subjects, hp, hp.seed + 1)
    texts = [r.text for r in requests]
    out = []
    for index in range(len(requests)):
        chosen = [str(t) for t in rng.choice(pool, size=min(hp.random_prompts, len(pool)), replace=False)]
        chosen += subject_texts[index * hp.subject_prompts : (index + 1) * hp.subject_prompts]
        others = [j for j in range(len(requests)) if texts[j] != texts[index]]
        if others and hp.other_prompts:
            picked = rng.choice(others, size=min(hp.other_prompts, len(others)), replace=False)
            chosen += [texts[j] for j in picked]
        out.append([t for t in chosen if t.strip()])
    return out


@functools.partial(jax.jit, static_argnames=("config", "layer", "scoring", "hp"))
def _retrofit(
    params: Params,
    config: ModelConfig,
    layer: int,
    scoring: tuple[str, str],
    hp: IrevaHparams,
    resid: jax.Array,
    mask: jax.Array,
    inputs: jax.Array,
    outside: jax.Array,
    outside_mask: jax.Array,
    labels: jax.Array,
    keys: jax.Array,
    values: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Adam on `L_edit + a·L_rec + b·L_irr` for each neuron (rows independent; see module doc).

    Args:
      resid: `[n, T, D]` layer-l residual output without the new neurons; mask `[n, T]`.
      inputs: `[n, D]` normalised MLP inputs `ĩ` at the last token; outside `[n, O, D]` those of the
        out-of-scope prompts (mask `[n, O]`).
      labels: `[n]`; keys, values: `[n, D]` initial neurons.

    Returns:
      The retrofitted keys and values and the edit NLL per neuron after the last step `[n]`.
    """
    score, act = scoring
    rotary, attend = decoder.attention_inputs(config, mask)
    above = jax.tree.map(lambda a: a[layer + 1 :], params["layers"])
    last = decoder.last_positions(mask)
    rows = jnp.arange(resid.shape[0])
    keys0 = keys

    def losses(neurons: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        k, v = neurons
        strength = hp.alpha * decoder.activation(act, gate.matched_scores(k, inputs, score) - hp.theta)
        x = resid.at[rows, last].add((strength[:, None] * v).astype(resid.dtype))
        h, _ = decoder.run_layers(config, above, x, rotary, attend)
        logits = decoder.unembed(config, params, h[rows, last])
        edit = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], -1)[:, 0]
        rec = jnp.square(jnp.sum((keys0 - k) * inputs, -1))
        out_scores = gate.matched_scores(k[:, None], outside, score)
        irr = jnp.sum(jax.nn.relu(out_scores - hp.theta) * outside_mask, -1) / jnp.maximum(
            outside_mask.sum(-1), 1
        )
        return jnp.sum(edit + hp.rec_weight * rec + hp.irr_weight * irr), edit

    optimiser = optax.adam(hp.lr)
    neurons = (keys, values)
    state = optimiser.init(neurons)

    def step(carry: tuple, _: None) -> tuple[tuple, None]:
        neurons, state = carry
        grads, _ = jax.grad(losses, has_aux=True)(neurons)
        updates, state = optimiser.update(grads, state, neurons)
        return (optax.apply_updates(neurons, updates), state), None

    (neurons, _), _ = jax.lax.scan(step, (neurons, state), None, length=hp.steps)
    _, nll = losses(neurons)
    return neurons[0], neurons[1], nll


def exclusive_floors(
    keys: np.ndarray, inputs: np.ndarray, owner: np.ndarray, score: str, margin: float, chunk: int = 1024
) -> np.ndarray:
    """`[n]` per neuron, the highest score its key reaches on the inputs of the other facts' pairs, plus
    `margin` (−inf when there is no other fact): the floor of `IrevaHparams.exclusive`.

    Args:
      keys: `[n, D]` neuron keys; inputs: `[n, D]` the normalised inputs of the pairs; owner: `[n]` fact.
    """
    floors = np.full(len(keys), -np.inf, np.float32)
    inputs_j, owner_j = jnp.asarray(inputs), jnp.asarray(owner)
    for start in range(0, len(keys), chunk):
        part = slice(start, start + chunk)
        scores = gate.key_scores(jnp.asarray(keys[part]), inputs_j, score)  # [n inputs, chunk]
        other = owner_j[:, None] != jnp.asarray(owner[part])[None, :]
        floors[part] = np.asarray(jnp.max(jnp.where(other, scores, -jnp.inf), axis=0)) + margin
    return floors


def ireva(
    model: Model,
    requests: Sequence[Request | dict],
    hp: IrevaHparams = IrevaHparams(),
    *,
    facts: Sequence[str] | None = None,
    progress: bool = True,
) -> AdaptorEdit:
    """iReVa neurons for a batch of facts (docs/methods.md §9): an `AdaptorEdit` to `apply` to the model.

    Args:
      requests: the facts (prompt with `{}` for the subject, subject, target).
      facts: their ids (default: fresh ones); ids already in the model are refused.
    """
    requests = [as_request(r) for r in requests]
    if not requests:
        raise InputError("no facts to edit")
    if facts is None:
        facts = [uuid.uuid4().hex[:12] for _ in requests]
    facts = [str(f) for f in facts]
    if len(facts) != len(requests):
        raise InputError(f"{len(facts)} fact ids for {len(requests)} facts")
    known = {f for e in adaptor_edits(model) for f in e.facts}
    clash = sorted(set(facts) & known) + sorted({f for f in facts if facts.count(f) > 1})
    if clash:
        raise InputError(f"fact ids already used: {', '.join(clash[:10])}")
    for name, options in (("normalise", gate.NORMALISATIONS), ("score", gate.SCORES)):
        if getattr(hp, name) not in options:
            raise InputError(f"iReVa {name} must be one of {', '.join(options)}, got {getattr(hp, name)!r}")
    config = model.config
    layer = hp.resolve_layer(config)
    pairs = answer_pairs(model, requests)
    n = len(pairs.labels)
    present = 0 if gate.adaptor_of(model.params) is None else used_slots(gate.adaptor_of(model.params))
    if hp.max_neurons is not None and present + n > hp.max_neurons:
        raise CapacityError(
            f"{len(requests)} facts need {n} adaptor neurons; with the {present} present that exceeds the "
            f"limit of {hp.max_neurons} (raise IrevaHparams.max_neurons)"
        )
    settings = {
        "layer": layer, "normalise": hp.normalise, "score": hp.score, "activation": config.activation,
        "theta": hp.theta, "alpha": hp.alpha,
    }  # fmt: skip
    values = unembedding_rows(model.params, config, pairs.labels)
    existing = gate.adaptor_of(model.params)
    reuse = existing is not None and existing.normalise == "center"
    pool: list[str] = []
    if hp.retrofit or (hp.normalise == "center" and not reuse):
        pool = random_texts(model, min(256, max(hp.random_prompts * len(requests), 64)), hp)
    center = None
    if hp.normalise == "center":
        center = np.asarray(existing.center) if reuse else input_mean(model, layer, pool)
    mean = None if center is None else jnp.asarray(center)
    bar = tqdm(total=n, desc="iReVa neurons", unit="neuron", disable=not progress)
    keys = np.zeros_like(values)
    edit_inputs = np.zeros_like(values)
    outside_texts, encoded = None, {}
    if hp.retrofit:  # the out-of-scope inputs repeat across facts (pool, other facts' inputs): read each once
        outside_texts = out_of_scope_prompts(model, requests, hp, pool)
        unique = sorted({t for texts in outside_texts for t in texts})
        vectors = gate.normalise_input(jnp.asarray(last_inputs(model, unique, layer)), hp.normalise, mean)
        encoded = dict(zip(unique, np.asarray(vectors), strict=True))
    nll = np.full(n, np.nan, np.float32)
    params = working_params(model)
    for start in range(0, n, hp.chunk):
        part = slice(start, start + hp.chunk)
        ids, mask = tok.pad(pairs.rows[part], tok.pad_id(model.tokenizer), side="right", multiple=8)
        resid, m_in = _layer_states(params, config, layer, ids, mask)
        inputs = gate.normalise_input(m_in, hp.normalise, mean)
        keys[part] = edit_inputs[part] = np.asarray(inputs)
        if hp.retrofit:
            owners = pairs.owner[part]
            width = max(1, max(len(outside_texts[o]) for o in owners))
            outside = np.zeros((len(owners), width, config.d_model), np.float32)
            outside_mask = np.zeros((len(owners), width), np.float32)
            for row, o in enumerate(owners):
                for column, text in enumerate(outside_texts[o]):
                    outside[row, column] = encoded[text]
                    outside_mask[row, column] = 1.0
            k, v, loss = _retrofit(
                params, config, layer, (hp.score, config.activation), hp, resid,
                jnp.asarray(mask), inputs, jnp.asarray(outside), jnp.asarray(outside_mask),
                jnp.asarray(pairs.labels[part]), inputs, jnp.asarray(values[part]),
            )  # fmt: skip
            keys[part], values[part], nll[part] = np.asarray(k), np.asarray(v), np.asarray(loss)
        bar.update(len(pairs.labels[part]))
    bar.close()
    info: dict[str, Any] = {"neurons": n, "retrofit": hp.retrofit}
    if hp.retrofit:
        info["edit_nll"] = round(float(np.mean(nll)), 4)
    floor = None
    if hp.exclusive:
        floor = exclusive_floors(keys, edit_inputs, pairs.owner, hp.score, hp.exclusive_margin)
        own = np.asarray(gate.matched_scores(jnp.asarray(keys), jnp.asarray(edit_inputs), hp.score))
        info["floor_above_own_score"] = int(np.count_nonzero(floor >= own))
    return AdaptorEdit(
        facts=tuple(facts), keys=keys, values=values, owner=pairs.owner, token=pairs.token, gate=settings,
        method="ireva" if hp.retrofit else "ireva-init", requests=tuple(r.to_dict() for r in requests),
        info=info, max_neurons=hp.max_neurons, center=center, floor=floor,
    )  # fmt: skip
