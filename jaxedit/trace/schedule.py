"""The host-side schedule of a causal-tracing grid (docs/methods.md §1; Meng et al., 2022, §2.1): which units
(cell x noise sample) run, from which layer, over which rows, which of them fork from another, which rows
are patched before the layer loop, and how the layers are cut into scanned segments.

`build_plan` turns a kind (`hidden`, `mlp`, `attn`), a window and the prompt's live tokens into a `Plan`
of static index arrays; `jaxedit.trace.program` runs a plan as one compiled program. The five facts the
schedule exploits are stated in that module's docstring.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np

from jaxedit.errors import InputError

Kind = Literal["hidden", "mlp", "attn"]
Sever = Literal["mlp", "attn", "both"] | None
KINDS: tuple[str, ...] = ("hidden", "mlp", "attn")


def window_bounds(layer: int, n_layers: int, window: int, convention: str = "code") -> tuple[int, int]:
    """Inclusive layer range restored around `layer` for the mlp / attn kinds (docs/methods.md §1).

    `code` (reference implementation, default): `[l - w//2, l + ceil(w/2) - 1]`, i.e. `[l-5, l+4]` for
    w = 10; `paper` (the text): `[l - ceil(w/2) + 1, l + w//2]`, i.e. `[l-4, l+5]`. Clipped to the model.
    """
    if convention == "code":
        lo, hi = layer - window // 2, layer + (window + 1) // 2 - 1
    elif convention == "paper":
        lo, hi = layer - (window + 1) // 2 + 1, layer + window // 2
    else:
        raise InputError(f"window_convention must be 'code' or 'paper', got {convention!r}")
    return max(0, lo), min(n_layers - 1, hi)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: build_plan caches one per key
class Plan:
    """Static schedule of one grid program (host numpy arrays, fixed by the key of `build_plan`).

    Every recomputed (unit, token row) pair is an *item*; items are stored flat, grouped by unit, and
    units are sorted by start layer, so the items recomputed at layer j are the prefix `[:items[j]]`.
    All data movement is by static gathers (no scatters, which are slow on CPU).

    Attributes:
      unit_layer / unit_token / unit_sample: the cell and the noise sample (within a chunk) of each unit.
      unit_start: first layer the unit recomputes (`n_layers` when nothing is left to compute).
      active[j] / items[j]: how many units / items are recomputed at layer j.
      item_unit / item_row: unit and token row of every item.
      key_index: `[U, T]` row of each unit's keys in `concat(cached keys [S*T], item keys)`.
      query_index: `[U, T]` row of each unit's queries in `concat(zero row, item queries)`.
      head_index: `[N]` row `unit * T + token` of each item in the per-unit attention output.
      last_item: `[U]` item holding each unit's last token.
      start_index / start_clean: `[N]` initial state of each item: row in the corrupted stream
        `[S, L+1, T]` flattened, and the clean-stream row `[L+1, T]` flattened, or -1.
      patch_layer / patch_token / patch_sample: `[P]` the distinct first-window-layer rows of the mlp /
        attn kinds (fact 4 above), sorted by layer; empty for the hidden kind.
      start_patch: `[N]` patched row of each item (its unit's row t), or -1.
      replace_attn[j] / replace_mlp[j]: `[N_j]` source row in `concat(clean [T], corrupted [S*T])` of
        items whose attention / MLP output is overwritten at layer j, -1 for the others.
      fork[j]: `[N_j]` item whose current row each item takes at the start of layer j (a unit forked
        from its parent there, fact 5), -1 for the others.
      segments: `(first, end)` layer ranges below the last layer; each runs as one `lax.scan` over its
        layers at the shapes of its last layer (`(j, j + 1)` ranges: unrolled, exact work).
    """

    kind: str
    n_layers: int
    length: int
    live: int
    samples: int
    unit_layer: np.ndarray
    unit_token: np.ndarray
    unit_sample: np.ndarray
    unit_start: np.ndarray
    active: tuple[int, ...]
    items: tuple[int, ...]
    item_unit: np.ndarray
    item_row: np.ndarray
    key_index: np.ndarray
    query_index: np.ndarray
    head_index: np.ndarray
    last_item: np.ndarray
    start_index: np.ndarray
    start_clean: np.ndarray
    patch_layer: np.ndarray
    patch_token: np.ndarray
    patch_sample: np.ndarray
    start_patch: np.ndarray
    replace_attn: tuple[np.ndarray, ...]
    replace_mlp: tuple[np.ndarray, ...]
    fork: tuple[np.ndarray, ...]
    segments: tuple[tuple[int, int], ...]

    @property
    def n_units(self) -> int:
        return len(self.unit_layer)

    def recomputed_rows(self) -> int:
        """Token-layer rows the program recomputes (the work measure of the grid), padding included.

        A patched row of the attn kind counts as one row (it runs one MLP row).
        """
        rows = sum((end - first) * self.items[end - 1] for first, end in self.segments) + self.items[-1]
        return rows + (len(self.patch_layer) if self.kind == "attn" else 0)


def _cells(kind: str, n_layers: int, length: int, live: int, window: int, convention: str) -> list[list]:
    """The grid's cells `[start, layer, token, bounds, parent layer or -1]`, sorted by start layer (units
    active at layer j then form a prefix of the unit list)."""
    cells = []
    for layer in range(n_layers):
        for token in range(length - live, length):
            if kind == "hidden":
                start, bounds = layer + 1, (layer + 1, n_layers - 1)
            else:  # the first window layer only patches row t (fact 4): the unit starts above it
                bounds = window_bounds(layer, n_layers, window, convention)
                start = bounds[0] + 1
            cells.append([start, layer, token, bounds, -1])
    if kind != "hidden":  # fact 5: windows clipped to the same first layer share their lower layers
        groups: dict[tuple[int, int], list] = {}
        for cell in cells:
            groups.setdefault((cell[3][0], cell[2]), []).append(cell)
        for group in groups.values():
            group.sort(key=lambda cell: cell[3][1])
            for below, cell in itertools.pairwise(group):
                if cell[3][1] > below[3][1]:  # same restorations up to below's last window layer
                    cell[0], cell[4] = below[3][1] + 1, below[1]
    cells.sort(key=lambda c: c[0])  # stable
    return cells


def _attention_indices(
    units: list[tuple], first_item: list[int], t_len: int, samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per unit and row, where attention reads its key / value (a cached corrupted row before the unit's
    token, a recomputed item from it on) and its query (0: none, else 1 + item index) `[n_units, T]`."""
    key_index = np.zeros((len(units), t_len), np.int32)
    query_index = np.zeros((len(units), t_len), np.int32)
    rows = np.arange(t_len)
    for index, (_, _, token, s, _) in enumerate(units):
        mine = first_item[index] + rows - token  # item index of row p >= token
        key_index[index] = np.where(rows < token, s * t_len + rows, samples * t_len + mine)
        query_index[index] = np.where(rows < token, 0, 1 + mine)
    return key_index, query_index


def _fork_sources(
    units: list[tuple], parents: list[int], first_item: list[int], items: tuple[int, ...], t_len: int
) -> list[np.ndarray]:
    """Per layer `[items[j]]`: the item a forked unit's row copies at its start layer (fact 5), or -1."""
    unit_of = {(u[1], u[2], u[3]): index for index, u in enumerate(units)}
    forks = [np.full(n, -1, np.int32) for n in items]
    for index, (start, _, token, s, _) in enumerate(units):
        if parents[index] >= 0:
            source = unit_of[(parents[index], token, s)]
            rows = np.arange(t_len - token)
            forks[start][first_item[index] + rows] = first_item[source] + rows
    return forks


def _replacements(
    units: list[tuple],
    first_item: list[int],
    active: tuple[int, ...],
    items: tuple[int, ...],
    kind: str,
    site: str,
    sever: str | None,
    t_len: int,
) -> tuple[np.ndarray, ...]:
    """Per layer `[items[j]]`: the row of the clean (`< T`) or corrupted table a unit's `site` output
    takes there (restoration in the window, or severing a hidden-state restoration), or -1."""
    per_layer = []
    for j, n in enumerate(items):
        source = np.full(n, -1, np.int32)
        for index in range(active[j]):
            _, layer, token, s, (lo, hi) = units[index]
            if kind == site and lo <= j <= hi:  # restore the clean sublayer output in the window
                source[first_item[index]] = token
            elif kind == "hidden" and sever in (site, "both") and j > layer:  # severing
                source[first_item[index]] = t_len + s * t_len + token
        per_layer.append(source)
    return tuple(per_layer)


@functools.lru_cache(maxsize=64)
def build_plan(
    kind: str,
    n_layers: int,
    length: int,
    live: int,
    samples: int,
    window: int,
    convention: str,
    sever: str | None,
    segments: int | None = None,
) -> Plan:
    """The static schedule for a grid over the last `live` of `length` token rows.

    `segments`: None unrolls the layer loop (every layer at its own shapes: the least work, the longest
    compile; best on a CPU); k groups the layers below the last into at most k scanned segments, with
    boundaries that minimise the padded work (compiles in a fraction of the time; for accelerators).
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    t_len = length
    cells = _cells(kind, n_layers, length, live, window, convention)
    units = [
        (start, layer, token, s, bounds) for start, layer, token, bounds, _ in cells for s in range(samples)
    ]
    parents = [parent for *_, parent in cells for _ in range(samples)]
    n_units = len(units)
    unit_start = np.array([u[0] for u in units], np.int32)
    item_unit, item_row, first_item = [], [], []
    for index, (_, _, token, _, _) in enumerate(units):
        first_item.append(len(item_unit))
        item_unit += [index] * (t_len - token)
        item_row += list(range(token, t_len))
    first_item.append(len(item_unit))
    item_unit_a, item_row_a = np.asarray(item_unit, np.int32), np.asarray(item_row, np.int32)
    active = tuple(int((unit_start <= j).sum()) for j in range(n_layers))
    items = tuple(first_item[c] for c in active)

    key_index, query_index = _attention_indices(units, first_item, t_len, samples)
    unit_sample_items = np.array([units[u][3] for u in item_unit], np.int32)
    unit_start_items = unit_start[item_unit_a]
    start_index = (unit_sample_items * (n_layers + 1) + unit_start_items) * t_len + item_row_a
    start_clean = np.full(len(item_unit), -1, np.int32)
    start_patch = np.full(len(item_unit), -1, np.int32)
    firsts = np.asarray(first_item[:-1], np.int64)
    unit_token = np.array([u[2] for u in units], np.int32)
    patches = np.zeros((0, 3), np.int32)
    if kind == "hidden":
        start_clean[firsts] = unit_start * t_len + unit_token
    elif n_units:
        roots = np.flatnonzero(np.asarray(parents) < 0)  # forked units start from their parent's rows
        keys = np.stack([unit_start - 1, unit_token, [u[3] for u in units]], axis=1)[roots]  # (lo, t, s)
        patches, which = np.unique(keys, axis=0, return_inverse=True)  # sorted by layer first
        start_patch[firsts[roots]] = which.reshape(-1)
    forks = _fork_sources(units, parents, first_item, items, t_len)

    def replacements(site: str) -> tuple[np.ndarray, ...]:
        return _replacements(units, first_item, active, items, kind, site, sever, t_len)

    return Plan(
        # the grid and its layer ranges
        segments=layer_segments(items, segments), kind=kind, n_layers=n_layers, length=length, live=live,
        samples=samples,
        # units: one restored (layer, token, sample) run each
        unit_layer=np.array([u[1] for u in units], np.int32), unit_token=unit_token,
        unit_sample=np.array([u[3] for u in units], np.int32), unit_start=unit_start, active=active,
        # items: the rows computed per layer, and where each reads its keys and queries
        items=items, item_unit=item_unit_a, item_row=item_row_a, key_index=key_index,
        query_index=query_index, head_index=item_unit_a * t_len + item_row_a,
        last_item=np.asarray(first_item[1:], np.int32) - 1,
        # where units start, and the restored states patched in
        start_index=start_index.astype(np.int32), start_clean=start_clean,
        patch_layer=patches[:, 0].astype(np.int32), patch_token=patches[:, 1].astype(np.int32),
        patch_sample=patches[:, 2].astype(np.int32), start_patch=start_patch,
        replace_attn=replacements("attn"), replace_mlp=replacements("mlp"), fork=tuple(forks),
    )  # fmt: skip


def layer_segments(items: Sequence[int], segments: int | None) -> tuple[tuple[int, int], ...]:
    """Contiguous layer ranges covering the layers with work below the last, at most `segments` of them.

    Every layer of a range runs at the item count of its last layer (items grow with the layer), so a
    range `[a, b)` costs `(b - a) * items[b - 1]`; the boundaries minimise the total by dynamic
    programming. `None`: one range per layer.
    """
    layers = [j for j in range(len(items) - 1) if items[j] > 0]
    if not layers:
        return ()
    first = layers[0]
    if segments is None:
        return tuple((j, j + 1) for j in range(first, len(items) - 1))
    if segments < 1:
        raise InputError(f"segments must be at least 1, got {segments}")
    end = len(items) - 1
    n = end - first
    k = min(segments, n)
    inf = float("inf")
    # best[m][i]: least cost of covering layers first .. first+i-1 with m ranges
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for m in range(1, k + 1):
        for i in range(1, n + 1):
            for h in range(m - 1, i):
                cost = best[m - 1][h] + (i - h) * items[first + i - 1]
                if cost < best[m][i]:
                    best[m][i], cut[m][i] = cost, h
    m = min(range(1, k + 1), key=lambda count: best[count][n])
    bounds, i = [], n
    while m > 0:
        h = cut[m][i]
        bounds.append((first + h, first + i))
        i, m = h, m - 1
    return tuple(reversed(bounds))
