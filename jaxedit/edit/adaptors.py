"""iReVa edits as journal entries: adaptor neurons added to a model, listed, traced and withdrawn
(docs/methods.md §9; iReVa 2024 §4.3 and §6.2).

An `AdaptorEdit` holds the neurons of a batch of facts (one neuron per answer token). Applying it
appends them to the fixed-capacity arrays of the model's adaptor (`jaxedit.edit.gate.Adaptor`), doubling
the capacity when full; the unedited params never change, so withdrawing the whole entry replays the
other edits on the base exactly like a weight delta (`jaxedit.edit.delta.revert`). Withdrawing one fact
switches its neurons off in one of two ways (`WITHDRAWAL_MODES`):

- `mute` (default): the neurons stay in the gate's top-1 but add nothing. Every input the fact's neuron
  won gets the base model's output back, and every other input keeps exactly the output it had: the
  withdrawal undoes this fact and touches nothing else.
- `remove` (the paper's deactivation, iReVa §4.3 / §6.2): the neurons leave the top-1 (score −∞), the
  same outputs as never having added them. On an input the fact's neuron won, the best remaining neuron
  may now pass θ and write its own answer (zsRE's shared question templates make that common on
  SmolLM2, `experiments/results/ireva_zsre.md`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core import tokens as tok
from jaxedit.core.decoder import forward
from jaxedit.core.layout import Params
from jaxedit.edit.gate import Adaptor, adaptor_of, top_neuron, with_adaptor, writes
from jaxedit.errors import InputError, NotAppliedError
from jaxedit.io.loading import Model

GATE_FIELDS = ("layer", "normalise", "score", "activation")


class CapacityError(InputError):
    """Adding neurons would pass the user's limit on adaptor neurons."""


@dataclasses.dataclass(frozen=True, eq=False)
class AdaptorEdit:
    """Adaptor neurons for a batch of facts.

    Attributes:
      facts: fact ids (unique in a model); `requests` the matching requests (for reports and journals).
      keys, values: `[n, D]` the neurons (n = total answer tokens of the facts).
      owner: `[n]` index into `facts` of each neuron; token: `[n]` its answer-token index.
      gate: `layer`, `normalise`, `score`, `activation`, `theta`, `alpha` (shared by all of a model's
        adaptor edits).
      withdrawn: facts switched off (their neurons stay in the arrays); `removed`: those of them whose
        neurons left the gate's top-1 (`remove` mode), the others are muted.
      center: `[D]` the mean input of the `center` normalisation (None for the others).
      floor: `[n]` each neuron's own lower bound on the score it needs to fire (None: θ alone;
        `IrevaHparams.exclusive`).
      max_neurons: the user's limit on neurons in the model (None: no limit).
    """

    facts: tuple[str, ...]
    keys: np.ndarray
    values: np.ndarray
    owner: np.ndarray
    token: np.ndarray
    gate: dict
    method: str = "ireva"
    requests: tuple[dict, ...] = ()
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    info: dict = dataclasses.field(default_factory=dict)
    withdrawn: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    center: np.ndarray | None = None
    floor: np.ndarray | None = None
    max_neurons: int | None = None

    def __post_init__(self) -> None:
        keys, values = np.asarray(self.keys, np.float32), np.asarray(self.values, np.float32)
        owner, token = np.asarray(self.owner, np.int32), np.asarray(self.token, np.int32)
        n = keys.shape[0]
        if keys.ndim != 2 or values.shape != keys.shape or owner.shape != (n,) or token.shape != (n,):
            raise InputError(
                f"adaptor edit arrays disagree: keys {keys.shape}, values {values.shape}, "
                f"owner {owner.shape}, token {token.shape}"
            )
        if len(set(self.facts)) != len(self.facts):
            raise InputError("adaptor edit holds the same fact id twice")
        if n and (owner.min() < 0 or owner.max() >= len(self.facts)):
            raise InputError("adaptor edit neurons point at facts it does not hold")
        if not (np.isfinite(keys).all() and np.isfinite(values).all()):
            raise InputError(f"adaptor edit {self.id} has non-finite keys or values")
        missing = set(GATE_FIELDS) - set(self.gate)
        if missing:
            raise InputError(f"adaptor edit gate settings lack {sorted(missing)}")
        for name, value in (("keys", keys), ("values", values), ("owner", owner), ("token", token)):
            object.__setattr__(self, name, value)
        if self.center is not None:
            object.__setattr__(self, "center", np.asarray(self.center, np.float32).reshape(keys.shape[1]))
        elif self.gate["normalise"] == "center":
            raise InputError("an adaptor edit with the center normalisation needs its mean input `center`")
        if self.floor is not None:
            floor = np.asarray(self.floor, np.float32)
            if floor.shape != (n,) or np.isnan(floor).any():
                raise InputError(f"adaptor edit floor has shape {floor.shape} or NaNs, expected ({n},)")
            object.__setattr__(self, "floor", floor)
        object.__setattr__(self, "withdrawn", frozenset(self.withdrawn))
        object.__setattr__(self, "removed", frozenset(self.removed))
        if not self.removed <= self.withdrawn:
            raise InputError(
                f"adaptor edit {self.id}: removed facts {sorted(self.removed - self.withdrawn)} are not withdrawn"
            )
        object.__setattr__(self, "requests", tuple(self.requests))

    @property
    def layers(self) -> tuple[int, ...]:
        return (int(self.gate["layer"]),)

    def norms(self) -> dict[int, float]:
        """Frobenius norm of the values (what the neurons can write), at the adaptor's layer."""
        return {self.layers[0]: float(np.linalg.norm(self.values))}

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no arrays)."""
        return {
            "id": self.id, "kind": "adaptor", "method": self.method, "site": "mlp",
            "layers": list(self.layers), "rank": int(self.keys.shape[0]), "requests": list(self.requests),
            "facts": list(self.facts), "withdrawn": sorted(self.withdrawn), "removed": sorted(self.removed),
            "gate": self.gate,
            "max_neurons": self.max_neurons, "norms": {str(k): v for k, v in self.norms().items()},
            "info": self.info,
        }  # fmt: skip

    def tensors(self) -> dict[str, np.ndarray]:
        """Arrays for the journal file, named `<id>.<field>`."""
        names = ("keys", "values", "owner", "token")
        names += tuple(name for name in ("center", "floor") if getattr(self, name) is not None)
        return {f"{self.id}.{name}": getattr(self, name) for name in names}

    @classmethod
    def from_saved(cls, entry: dict, tensors: dict[str, np.ndarray]) -> AdaptorEdit:
        """The edit from a journal entry (`summary()`) and its tensors."""
        key = entry["id"]
        return cls(
            facts=tuple(entry["facts"]), keys=tensors[f"{key}.keys"], values=tensors[f"{key}.values"],
            owner=tensors[f"{key}.owner"], token=tensors[f"{key}.token"], gate=entry["gate"],
            method=entry["method"], requests=tuple(entry["requests"]), id=key, info=entry.get("info", {}),
            withdrawn=frozenset(entry.get("withdrawn", ())), max_neurons=entry.get("max_neurons"),
            # journals written before muting existed removed every withdrawn fact
            removed=frozenset(entry.get("removed", entry.get("withdrawn", ()))),
            center=tensors.get(f"{key}.center"), floor=tensors.get(f"{key}.floor"),
        )  # fmt: skip

    def add_to(self, params: Params) -> Params:
        """`params` with these neurons appended to the model's adaptor (created on first use)."""
        return add_neurons(params, self)


def _capacity(needed: int, current: int) -> int:
    capacity = max(current, 16)
    while capacity < needed:
        capacity *= 2
    return capacity


def used_slots(adaptor: Adaptor) -> int:
    """Number of filled neuron slots (they are filled from the front)."""
    return int(np.count_nonzero(np.asarray(adaptor.fact) >= 0))


def add_neurons(params: Params, edit: AdaptorEdit) -> Params:
    """Append `edit`'s neurons to the params' adaptor (`adaptor_of`), growing its capacity by doubling; a new pytree."""
    gate = edit.gate
    current = adaptor_of(params)
    if current is not None:
        have = {name: getattr(current, name) for name in GATE_FIELDS}
        have.update(theta=float(current.theta), alpha=float(current.alpha))
        clash = {k: (have[k], gate[k]) for k in have if k in gate and have[k] != gate[k]}
        if edit.center is not None and not np.allclose(np.asarray(current.center), edit.center):
            clash["center"] = ("the model's mean input", "another")
        if clash:
            raise InputError(
                f"adaptor edit {edit.id} has gate settings {clash} (model vs edit) unlike the model's"
            )
    filled = 0 if current is None else used_slots(current)
    first_fact = 0 if current is None or filled == 0 else int(np.asarray(current.fact).max()) + 1
    n = edit.keys.shape[0]
    if edit.max_neurons is not None and filled + n > edit.max_neurons:
        raise CapacityError(
            f"adding {n} adaptor neurons to the {filled} present exceeds the limit of {edit.max_neurons}"
        )
    width = edit.keys.shape[1]
    if width != params["embed"]["tokens"].shape[1]:
        raise InputError(
            f"adaptor edit {edit.id} has width {width}, the model {params['embed']['tokens'].shape[1]}"
        )
    capacity = _capacity(filled + n, 0 if current is None else current.capacity)
    if current is None:
        current = Adaptor(
            keys=jnp.zeros((capacity, width), jnp.float32), values=jnp.zeros((capacity, width), jnp.float32),
            active=jnp.zeros((capacity,), bool), muted=jnp.zeros((capacity,), bool), fact=jnp.full((capacity,), -1, jnp.int32),
            token=jnp.zeros((capacity,), jnp.int32), floor=jnp.full((capacity,), -jnp.inf, jnp.float32),
            theta=jnp.float32(gate["theta"]),
            alpha=jnp.float32(gate["alpha"]),
            center=jnp.zeros((width,), jnp.float32) if edit.center is None else jnp.asarray(edit.center),
            layer=int(gate["layer"]), normalise=gate["normalise"],
            score=gate["score"], activation=gate["activation"],
        )  # fmt: skip
    elif capacity > current.capacity:
        grow = capacity - current.capacity

        def pad(a: jax.Array, fill: Any) -> jax.Array:
            return jnp.concatenate([a, jnp.full((grow, *a.shape[1:]), fill, a.dtype)])

        current = current.replace(
            keys=pad(current.keys, 0.0), values=pad(current.values, 0.0), active=pad(current.active, False),
            muted=pad(current.muted, False), fact=pad(current.fact, -1), token=pad(current.token, 0), floor=pad(current.floor, -jnp.inf),
        )  # fmt: skip
    removed = np.array([edit.facts[o] in edit.removed for o in edit.owner], bool)
    muted = np.array([edit.facts[o] in edit.withdrawn - edit.removed for o in edit.owner], bool)
    rows = slice(filled, filled + n)
    floor = np.full(n, -np.inf, np.float32) if edit.floor is None else edit.floor
    current = current.replace(
        floor=current.floor.at[rows].set(floor),
        keys=current.keys.at[rows].set(edit.keys), values=current.values.at[rows].set(edit.values),
        active=current.active.at[rows].set(~removed), muted=current.muted.at[rows].set(muted), fact=current.fact.at[rows].set(first_fact + edit.owner),
        token=current.token.at[rows].set(edit.token),
    )  # fmt: skip
    return with_adaptor(params, current)


def adaptor_edits(model: Model) -> list[AdaptorEdit]:
    return [e for e in model.edits if isinstance(e, AdaptorEdit)]


def neuron_facts(model: Model) -> list[tuple[str, int]]:
    """`(fact id, answer-token index)` of every filled neuron slot, in slot order."""
    out = []
    for edit in adaptor_edits(model):
        out += [(edit.facts[o], int(t)) for o, t in zip(edit.owner, edit.token, strict=True)]
    return out


def list_facts(model: Model) -> list[dict[str, Any]]:
    """Every adaptor fact of the model: its id, edit entry, request, neurons, whether it is active and,
    if withdrawn, how (`mute` or `remove`)."""
    rows = []
    for edit in adaptor_edits(model):
        for index, fact in enumerate(edit.facts):
            request = edit.requests[index] if index < len(edit.requests) else {}
            rows.append({
                "fact": fact, "edit": edit.id, "method": edit.method, "request": request,
                "neurons": int(np.count_nonzero(edit.owner == index)), "active": fact not in edit.withdrawn,
                "withdrawal": None if fact not in edit.withdrawn else "remove" if fact in edit.removed else "mute",
            })  # fmt: skip
    return rows


WITHDRAWAL_MODES = ("mute", "remove")


def switch_off(adaptor: Adaptor, slots: Sequence[int], mode: str = "mute") -> Adaptor:
    """`adaptor` with the neurons in `slots` muted (in the top-1, adding nothing) or removed from the gate."""
    if mode not in WITHDRAWAL_MODES:
        raise InputError(f"unknown withdrawal mode {mode!r}; choose from {', '.join(WITHDRAWAL_MODES)}")
    index = jnp.asarray(np.asarray(slots, np.int32))
    if mode == "mute":
        return adaptor.replace(muted=adaptor.muted.at[index].set(True))
    return adaptor.replace(active=adaptor.active.at[index].set(False))


def withdraw_fact(model: Model, fact: str, mode: str = "mute") -> Model:
    """The model with one fact's neurons switched off, muted or removed (module docstring; `KeyError`
    naming the known facts when there is no such fact; `switch_off` refuses an unknown mode)."""
    edits = list(model.edits)
    for position, edit in enumerate(edits):
        if isinstance(edit, AdaptorEdit) and fact in edit.facts:
            if fact in edit.withdrawn:
                raise NotAppliedError(f"fact {fact!r} is already withdrawn")
            removed = edit.removed | {fact} if mode == "remove" else edit.removed
            edits[position] = dataclasses.replace(edit, withdrawn=edit.withdrawn | {fact}, removed=removed)
            slots = [i for i, (f, _) in enumerate(neuron_facts(model)) if f == fact]
            adaptor = switch_off(adaptor_of(model.params), slots, mode)
            return model.replace(params=with_adaptor(model.params, adaptor), edits=tuple(edits))
    known = [f for e in adaptor_edits(model) for f in e.facts]
    shown = ", ".join(known[:10]) + (f" ... ({len(known)} in all)" if len(known) > 10 else "")
    raise NotAppliedError(f"no adaptor fact {fact!r} in this model (facts: {shown or 'none'})")


@dataclasses.dataclass(frozen=True)
class Firing:
    """Which adaptor neuron won the gate for a prompt's last token, whether it changed the output (it
    passed its threshold, θ or the neuron's own floor when higher, and is not muted) and whether it is a
    muted (withdrawn) fact's neuron."""

    prompt: str
    fact: str | None
    token: int | None
    score: float
    fired: bool
    muted: bool = False


def fired(model: Model, prompts: Sequence[str] | str) -> list[Firing]:
    """For each prompt, the adaptor neuron with the highest score at its last token (iReVa eq. 12), its
    fact and score, and whether it changed the output (score past the neuron's threshold, not muted)."""
    adaptor = adaptor_of(model.params)
    if adaptor is None:
        raise InputError("this model has no adaptor neurons (no iReVa edit applied)")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids, mask = tok.encode(model.tokenizer, prompts)
    m_in = forward(model.params, model.config, ids, mask, taps=("mlp_in",)).taps["mlp_in"]
    winner, best, wrote = _winners(adaptor, m_in[:, adaptor.layer, -1])
    table, muted = neuron_facts(model), np.asarray(adaptor.muted)
    out = []
    for prompt, w, s, p in zip(prompts, np.asarray(winner), np.asarray(best), np.asarray(wrote), strict=True):
        fact, token = table[w] if w >= 0 else (None, None)
        out.append(Firing(prompt, fact, token, float(s), bool(w >= 0 and p), bool(w >= 0 and muted[w])))
    return out


@jax.jit
def _winners(adaptor: Adaptor, m_in: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    _, winner, best = top_neuron(adaptor, m_in)
    return winner, best, writes(adaptor, winner, best)
