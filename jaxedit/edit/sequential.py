"""Lifelong (sequential) editing: a stream of requests edited batch after batch, each batch computed on
the model that holds the earlier ones (Fang et al., 2025, AlphaEdit §3.3 and §4's sequential protocol;
Meng et al., 2023, MEMIT §5 for batches).

Every batch is one `Delta`, applied through an `EditJournal`, so any batch can be withdrawn later
(deltas are additive: withdrawing batch 3 of 5 leaves exactly the base weights plus batches 1, 2, 4
and 5). For MEMIT, PMET and AlphaEdit a running sum `K_pᵀK_p` of the keys each earlier batch wrote
at each critical layer is kept and passed to the next solve, which then keeps those edits' outputs in
place (`keep_keys`; AlphaEdit's sequential objective, and the same term added to MEMIT's `λC`).
ROME edits each request of a batch in turn (`rome_sequence`), as in the papers' sequential ROME.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxedit.edit.alphaedit import alphaedit_layers, layer_projectors
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.delta import Delta
from jaxedit.edit.journal import EditJournal
from jaxedit.edit.memit import memit_layers
from jaxedit.edit.registry import method_hparams
from jaxedit.edit.requests import Request, as_request
from jaxedit.edit.rome import default_layer, rome_sequence
from jaxedit.edit.sequential_state import load_run, run_key, save_run
from jaxedit.edit.stats import KeyStats
from jaxedit.errors import InputError
from jaxedit.io.loading import Model

METHODS = ("rome", "memit", "pmet", "alphaedit")

# (model after the batch, every request edited so far, batches done) -> measurements
Probe = Callable[[Model, Sequence[Request], int], Mapping[str, Any]]


@dataclasses.dataclass
class SequentialRun:
    """The journal of a sequential run (one entry per batch), per-batch records and the probes taken."""

    journal: EditJournal
    method: str
    batches: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    earlier_keys: dict[int, np.ndarray]

    @property
    def model(self) -> Model:
        """The model after every batch that is still applied."""
        return self.journal.model

    @property
    def deltas(self) -> list[Delta]:
        """The batches' deltas, in order."""
        return list(self.journal.model.edits)


def default_hparams(model: Model, method: str) -> Any:
    """The packaged settings of `method` for this model."""
    if method in METHODS:
        return method_hparams(method, model)
    raise InputError(f"sequential editing supports {', '.join(METHODS)}, not {method!r}")


def in_batches(requests: Sequence[Any], batch_size: int) -> list[list[Request]]:
    """`requests` as consecutive batches of `batch_size` (the last one shorter)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    items = [as_request(r) for r in requests]
    if not items:
        raise InputError("no edit requests")
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def sequential(
    model: Model,
    requests: Sequence[Request | dict],
    method: str,
    batch_size: int,
    stats: Mapping[int, KeyStats | np.ndarray],
    hp: Any = None,
    *,
    keep_keys: bool = True,
    probe: Probe | None = None,
    probe_every: int = 1,
    templates: Sequence[str] | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> SequentialRun:
    """Edit `requests` in batches of `batch_size`, each on the model holding the earlier batches.

    Args:
      method: `rome`, `memit`, `pmet` or `alphaedit`.
      stats: key statistics of the unedited model at the method's layers (they serve its edits).
      hp: the method's settings (default: its packaged file for this model).
      keep_keys: pass the earlier batches' `K_pᵀK_p` to each solve (MEMIT, PMET, AlphaEdit).
      probe: called as `probe(model, edited_so_far, batches_done)` before the first batch (0 done),
        after every `probe_every` batches and after the last; its results are kept in `probes` with
        the batch count, the edits so far and the seconds spent editing so far.
      templates: context templates (default: the method's, generated once on the unedited model).
      checkpoint: a folder the run is saved to after every batch (`jaxedit.edit.sequential_state`); a
        run saved there by the same method, settings, statistics, templates and batch size, on the same
        first requests, resumes after its last saved batch (its probes and timings are kept).

    Returns: a `SequentialRun`; `run.model` holds every batch, `run.journal.withdraw(run.deltas[i].id)`
    takes batch i out again.
    """
    if method not in METHODS:
        raise InputError(f"sequential editing supports {', '.join(METHODS)}, not {method!r}")
    if probe_every < 1:
        raise InputError(f"probe_every must be at least 1, got {probe_every}")
    batches = in_batches(requests, batch_size)
    hp = default_hparams(model, method) if hp is None else hp
    if templates is None:
        templates = context_templates(model, hp.prefixes, seed=hp.seed)
    key = run_key(model, method, batch_size, hp, stats, templates, keep_keys)
    saved = load_run(checkpoint, key, model, batches) if checkpoint is not None else None
    journal = saved.journal if saved else EditJournal(model)
    earlier: dict[int, np.ndarray] = saved.earlier_keys if saved else {}
    projectors = layer_projectors(model, stats, hp) if method == "alphaedit" else None
    if method == "rome":
        layer = default_layer(model) if hp.layer is None else hp.layer
        if layer not in stats:
            raise InputError(f"no statistics for ROME's layer {layer}")
        rome_stats = stats[layer]
    records: list[dict[str, Any]] = saved.records if saved else []
    probes: list[dict[str, Any]] = saved.probes if saved else []
    done: list[Request] = [r for b in batches[: len(records)] for r in b]
    editing = saved.editing_seconds if saved else 0.0

    def take_probe(count: int) -> None:
        if probe is not None:
            probes.append({"batches": count, "edits": len(done), "edit_seconds": round(editing, 2),
                           **probe(journal.model, list(done), count)})  # fmt: skip

    if not saved:
        take_probe(0)
    bar = tqdm(total=len(batches), initial=len(records), desc=f"{method} sequential", disable=not progress)
    for index, batch in enumerate(batches, start=1):
        if index <= len(records):  # saved by an earlier invocation
            continue
        start = time.perf_counter()
        current = journal.model
        if method == "rome":
            delta = rome_sequence(current, batch, rome_stats, hp, templates=templates, progress=False)
            keys = {}
        elif method == "alphaedit":
            solved = alphaedit_layers(
                current, batch, stats, hp, earlier_keys=earlier if keep_keys else None,
                projectors=projectors, templates=templates, progress=False,
            )  # fmt: skip
            delta, keys = solved.delta, solved.keys
        else:
            solved = memit_layers(
                current, batch, stats, hp, templates=templates,
                earlier_keys=earlier if keep_keys else None, progress=False,
            )  # fmt: skip
            delta, keys = solved.delta, solved.keys
        delta = dataclasses.replace(delta, info={**delta.info, "batch": index})
        journal.apply(delta)
        for layer, k in keys.items():
            k = np.asarray(k, np.float64)
            earlier[layer] = earlier.get(layer, 0.0) + k.T @ k
        seconds = time.perf_counter() - start
        editing += seconds
        done.extend(batch)
        records.append({"batch": index, "id": delta.id, "edits": len(batch), "seconds": round(seconds, 2)})
        if index % probe_every == 0 or index == len(batches):
            take_probe(index)
        if checkpoint is not None:
            save_run(checkpoint, key, journal, batches, earlier, records, probes, editing)
        bar.update()
    bar.close()
    return SequentialRun(journal, method, records, probes, earlier)
