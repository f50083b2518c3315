"""Causal tracing: the compiled grid equals a cell-by-cell loop over the core forward (same noise)."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxedit
from jaxedit.core import interventions as iv
from jaxedit.core.layout import init_params
from jaxedit.runtime.execution import ROW_BLOCK_CPU
from jaxedit.trace import Execution, Noise, program, schedule, trace
from jaxedit.trace.runs import clean_and_corrupted, make_noise

PROMPT = "the mother tongue of danielle darrieux is"  # subject "danielle darrieux": tokens 4-5 of 7


def sharpened(model: jaxedit.Model, factor: float = 6.0) -> jaxedit.Model:
    """Scale every matrix so the tiny random model makes confident predictions and tracing effects
    are large (an equality test on near-uniform outputs could not tell a wrong grid from a right one)."""
    return model.replace(params=jax.tree.map(lambda a: a * factor if a.ndim >= 2 else a, model.params))


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return sharpened(jaxedit.load_model(tiny_dirs["llama_gqa_untied"]))


def top1(model, ids) -> int:
    return int(jnp.argmax(jaxedit.forward(model.params, model.config, np.asarray(ids)[None]).logits[0, -1]))


def reference_grid(model, ids, corrupt_mask, noise, answer, kind, window=2, convention="code", sever=None):
    """One core forward per cell, written independently of the engine (the reference code's way)."""
    c, p = model.config, model.params
    n_samples, t_len = noise.shape[0], len(ids)
    batch = np.repeat(np.asarray(ids)[None], n_samples, 0)
    clean = jaxedit.forward(p, c, np.asarray(ids)[None], taps=("resid_post", "attn_out", "mlp_out")).taps
    corrupt = jaxedit.forward(
        p, c, batch, taps=("attn_out", "mlp_out"), interventions={"embed": iv.add(noise)}
    ).taps
    grid = np.zeros((c.n_layers, t_len))
    for layer in range(c.n_layers):
        for token in range(t_len):
            edits = {"embed": iv.add(noise)}
            mask = np.zeros((c.n_layers, t_len), bool)
            if kind == "hidden":
                mask[layer, token] = True
                edits["resid_post"] = iv.replace(mask, clean["resid_post"][0])
                if sever:
                    pin = np.zeros((c.n_layers, t_len), bool)
                    pin[layer + 1 :, token] = True
                    for site in {"mlp": ["mlp_out"], "attn": ["attn_out"], "both": ["mlp_out", "attn_out"]}[
                        sever
                    ]:
                        edits[site] = iv.freeze(pin, corrupt[site])
            else:
                lo, hi = schedule.window_bounds(layer, c.n_layers, window, convention)
                mask[lo : hi + 1, token] = True
                site = {"mlp": "mlp_out", "attn": "attn_out"}[kind]
                edits[site] = iv.replace(mask, clean[site][0])
            logits = jaxedit.forward(p, c, batch, interventions=edits).logits[:, -1]
            grid[layer, token] = float(jnp.mean(jax.nn.softmax(logits, -1)[:, answer]))
    return grid


def engine_grid(
    model, ids, corrupt_mask, noise, answer, kind, window=2, convention="code", sever=None, chunk=None,
    segments=None, row_block=ROW_BLOCK_CPU,
):  # fmt: skip
    c = model.config
    t_len = len(ids)
    key_mask = jnp.ones(t_len, bool)
    clean, corrupt, _, p_corrupt = clean_and_corrupted(
        model.params, c, jnp.asarray(ids), key_mask, noise, jnp.int32(answer)
    )
    first = int(np.argmax(corrupt_mask))
    n = noise.shape[0]
    chunk = chunk or n
    n_chunks = -(-n // chunk)
    order = np.arange(n_chunks * chunk) % n
    chunks = jax.tree.map(lambda a: a[order].reshape(n_chunks, chunk, *a.shape[1:]), corrupt)
    plan = schedule.build_plan(
        kind, c.n_layers, t_len, t_len - first, chunk, window, convention, sever, segments
    )
    probs = program.grid_program(
        model.params, c, plan, key_mask, jnp.arange(t_len), clean, chunks, jnp.int32(answer), row_block
    )
    return program.grid_from_units(plan, np.asarray(probs), n, float(jnp.mean(p_corrupt)), first)


CASES = [
    ("hidden", "subject", None),
    ("mlp", "subject", None),
    ("attn", "subject", None),
    ("hidden", "relation", None),
    ("mlp", "relation", None),
    ("attn", "relation", None),
    ("hidden", "subject", "mlp"),
    ("hidden", "subject", "attn"),
    ("hidden", "relation", "both"),
]


FAMILY_CASES = [("llama_gqa_untied", *case) for case in CASES] + [
    (name, *case)
    for name in ("neox_parallel", "gptj", "gpt2")
    for case in (("hidden", "subject", "both"), ("attn", "relation", None), ("mlp", "subject", None))
]


@pytest.mark.parametrize(("name", "kind", "corruption", "sever"), FAMILY_CASES)
def test_compiled_grid_equals_cell_by_cell_loop(tiny_dirs, name, kind, corruption, sever) -> None:
    model = sharpened(jaxedit.load_model(tiny_dirs[name]))
    ids = jaxedit.core.tokens.encode_one(model.tokenizer, PROMPT)
    mask, _ = jaxedit.trace.api.corrupted_tokens(model, PROMPT, ids, "danielle darrieux", corruption)
    noise = make_noise(3, 3, jnp.asarray(mask), model.config.d_model, 2.0)
    answer = top1(model, ids)
    expected = reference_grid(model, ids, mask, noise, answer, kind, sever=sever)
    # blocks of 8 rows: the row-wise work runs as several blocks, the last one padded
    got = engine_grid(model, ids, mask, noise, answer, kind, sever=sever, chunk=2, row_block=8)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.ptp(got) > 1e-2  # the grid is not flat: restoration matters somewhere


SEGMENT_CASES = [  # each kind, each corruption and a severed restoration (CASES run cell by cell above)
    ("hidden", "subject", "mlp"),
    ("mlp", "relation", None),
    ("attn", "subject", None),
    ("hidden", "relation", "both"),
]


@pytest.mark.parametrize(("kind", "corruption", "sever"), SEGMENT_CASES)
def test_scanned_segments_equal_the_unrolled_grid(tiny_dirs, kind, corruption, sever) -> None:
    base = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    config = dataclasses.replace(base.config, n_layers=8)  # deep enough for ranges of several layers
    model = base.replace(config=config, params=init_params(config, seed=2, scale=0.3))
    ids = jaxedit.core.tokens.encode_one(model.tokenizer, PROMPT)
    mask, _ = jaxedit.trace.api.corrupted_tokens(model, PROMPT, ids, "danielle darrieux", corruption)
    noise = make_noise(1, 3, jnp.asarray(mask), model.config.d_model, 2.0)
    answer = top1(model, ids)
    unrolled = engine_grid(model, ids, mask, noise, answer, kind, sever=sever, chunk=2, row_block=None)
    for segments in (1, 3):  # scanned ranges, with the row-wise work in blocks of 8 rows
        scanned = engine_grid(
            model, ids, mask, noise, answer, kind, sever=sever, chunk=2, segments=segments, row_block=8
        )
        np.testing.assert_allclose(scanned, unrolled, atol=1e-5)
    assert np.ptp(unrolled) > 1e-2


def test_layer_segments_cover_the_layers_at_least_padded_cost() -> None:
    items = (0, 0, 5, 9, 9, 20, 31, 40, 41, 60, 70)  # item counts per layer, the last layer apart
    for k in (1, 2, 3, 5):
        segments = schedule.layer_segments(items, k)
        assert len(segments) <= k
        assert segments[0][0] == 2 and segments[-1][1] == len(items) - 1
        assert all(a[1] == b[0] for a, b in itertools.pairwise(segments))
        cost = sum((end - first) * items[end - 1] for first, end in segments)
        # no split into k contiguous ranges costs less (brute force over the cut points)
        layers = range(3, len(items) - 1)
        for m in range(0, k):
            for cuts in itertools.combinations(layers, m):
                bounds = [2, *cuts, len(items) - 1]
                other = sum((b - a) * items[b - 1] for a, b in itertools.pairwise(bounds))
                assert cost <= other
    assert schedule.layer_segments(items, None) == tuple((j, j + 1) for j in range(2, 10))


@pytest.mark.parametrize("kind", ["mlp", "attn"])
def test_clipped_windows_fork_from_the_cell_below(kind) -> None:
    """Fact 5 of the engine: at 30 layers and window 10 (code convention), cell l = 1..5 has the window
    [0, l+4] and forks from cell l-1 (window [0, l+3]) at layer l+4; the others start above their
    first window layer (fact 4). Wrong schedules still pass the grid tests, only slower: this pins it."""
    plan = schedule.build_plan(kind, 30, 10, 4, 2, 10, "code", None)
    expected = {layer: layer + 4 if 1 <= layer <= 5 else max(layer - 5, 0) + 1 for layer in range(30)}
    assert all(plan.unit_start[u] == expected[plan.unit_layer[u]] for u in range(plan.n_units))
    forked_items = sum(int((f >= 0).sum()) for f in plan.fork)
    assert forked_items == sum(5 * 2 * (10 - t) for t in range(6, 10))  # 5 cells, 2 samples, rows t..9
    assert len(plan.patch_layer) == 4 * 2 * 25  # patched first-window rows: the 25 unforked cells


def test_paper_window_convention_matches_loop(model) -> None:
    ids = jaxedit.core.tokens.encode_one(model.tokenizer, PROMPT)
    mask, _ = jaxedit.trace.api.corrupted_tokens(model, PROMPT, ids, "danielle darrieux", "subject")
    noise = make_noise(0, 2, jnp.asarray(mask), model.config.d_model, 0.5)
    expected = reference_grid(model, ids, mask, noise, 5, "mlp", window=3, convention="paper")
    got = engine_grid(model, ids, mask, noise, 5, "mlp", window=3, convention="paper")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_window_bounds() -> None:
    assert schedule.window_bounds(10, 30, 10, "code") == (5, 14)
    assert schedule.window_bounds(10, 30, 10, "paper") == (6, 15)
    assert schedule.window_bounds(2, 30, 10, "code") == (0, 6)
    assert schedule.window_bounds(28, 30, 10, "code") == (23, 29)


def test_restoring_everything_gives_clean_and_nothing_gives_corrupt(model) -> None:
    c = model.config
    ids = np.asarray(jaxedit.core.tokens.encode_one(model.tokenizer, PROMPT))
    mask, _ = jaxedit.trace.api.corrupted_tokens(model, PROMPT, ids.tolist(), "danielle darrieux", "subject")
    noise = make_noise(1, 4, jnp.asarray(mask), c.d_model, 1.0)
    clean, _, p_clean, p_corrupt = clean_and_corrupted(
        model.params, c, jnp.asarray(ids), jnp.ones(len(ids), bool), noise, jnp.int32(7)
    )
    batch = np.repeat(ids[None], 4, 0)
    for site, values in (
        ("resid_post", clean["stream"][1:]),
        ("mlp_out", clean["mlp"]),
        ("attn_out", clean["attn"]),
    ):
        for restore, expected in ((True, float(p_clean)), (False, float(jnp.mean(p_corrupt)))):
            everything = jnp.full((c.n_layers, len(ids)), restore)
            edits = {"embed": iv.add(noise)}
            if site == "resid_post":
                edits[site] = iv.replace(everything, values)
            else:  # restoring every sublayer output of every layer also restores the whole stream
                edits["mlp_out"] = iv.replace(everything, clean["mlp"])
                edits["attn_out"] = iv.replace(everything, clean["attn"])
            logits = jaxedit.forward(model.params, c, batch, interventions=edits).logits[:, -1]
            got = float(jnp.mean(jax.nn.softmax(logits, -1)[:, 7]))
            assert got == pytest.approx(expected, abs=1e-6), (site, restore)
    # in the compiled grid: restoring the last layer's last token gives P_clean exactly; cells before
    # the corrupted tokens give P_corrupt exactly
    grid = engine_grid(model, ids.tolist(), mask, noise, 7, "hidden")
    assert grid[-1, -1] == pytest.approx(float(p_clean), abs=1e-6)
    assert np.allclose(grid[:, : int(np.argmax(mask))], float(jnp.mean(p_corrupt)))


def test_trace_api_on_tiny_model(model, tmp_path) -> None:
    result = trace(
        model, PROMPT, subject="danielle darrieux", noise=Noise(0.5, samples=3), window=2, answer="paris"
    )
    assert set(result.grids) == {"hidden", "mlp", "attn"}
    assert all(g.shape == (model.config.n_layers, 7) for g in result.grids.values())
    assert result.corrupted == [False] * 4 + [True] * 2 + [False]
    assert result.subject_span == (4, 6) and result.answer == "paris"
    assert result.grids["hidden"][-1, -1] == pytest.approx(result.p_clean, abs=1e-6)
    relation = trace(
        model, PROMPT, subject="danielle darrieux", corrupt="relation", noise=Noise(0.5, samples=2), window=2
    )
    assert relation.corrupted == [True] * 4 + [False] * 2 + [True]
    result.save_json(tmp_path / "t.json")
    result.plot(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_padding_bucket_does_not_change_the_grid(model) -> None:
    kwargs = dict(subject="danielle darrieux", noise=Noise(0.5, samples=2), window=2, kinds=("mlp", "hidden"))
    exact = trace(model, PROMPT, **kwargs)
    for bucket in (5, 8):  # 7 tokens padded to 10 and to 8
        padded = trace(model, PROMPT, execution=Execution(bucket=bucket), **kwargs)
        for kind in kwargs["kinds"]:
            np.testing.assert_allclose(padded.grids[kind], exact.grids[kind], atol=1e-5)


@pytest.mark.parametrize(("threads", "chunk_samples"), [(2, None), (3, 1), (2, 1)])
def test_programs_side_by_side_give_the_one_program_grid(model, threads, chunk_samples) -> None:
    # 3 samples as 2 chunks of 2 (one padded), 3 chunks of 1, and 4 chunks of 1 in two groups of two
    kwargs = dict(subject="danielle darrieux", noise=Noise(0.5, samples=3), window=2)
    one = trace(model, PROMPT, execution=Execution(threads=1), **kwargs)
    split = trace(model, PROMPT, execution=Execution(threads=threads, chunk_samples=chunk_samples), **kwargs)
    for kind in one.grids:
        np.testing.assert_allclose(split.grids[kind], one.grids[kind], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(prompt=PROMPT, subject="eiffel tower"), "does not occur"),
        (dict(prompt="", subject="x"), "non-empty"),
        (
            dict(prompt="danielle darrieux", subject="danielle darrieux", corrupt="relation"),
            "no relation tokens",
        ),
        (dict(prompt=PROMPT, subject="danielle darrieux", window=99), "window"),
        (dict(prompt=PROMPT, subject="danielle darrieux", kinds=("resid",)), "unknown kind"),
        (dict(prompt=PROMPT, subject="danielle darrieux", sever="ffn"), "sever"),
        (dict(prompt=PROMPT, subject="danielle darrieux", corrupt=(3, 99)), "not inside"),
        (dict(prompt=PROMPT, subject="danielle darrieux", noise=-1.0), "non-negative"),
    ],
)
def test_bad_input_raises_clear_errors(model, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        trace(model, **{"window": 2, "noise": Noise(samples=2), **kwargs})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Execution(threads=0), "threads"),
        (lambda: Execution(segments="many"), "segments"),
        (lambda: Execution(shapes="round"), "shapes"),
        (lambda: Execution(pad_to=(4,)), "pad_to"),
        (lambda: Noise(samples=0), "samples"),
        (lambda: Noise("4sigma"), "scale"),
    ],
)
def test_bad_settings_raise_clear_errors(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_execution_resolves_every_auto_field_per_backend() -> None:
    cpu, gpu = Execution().resolved("cpu"), Execution().resolved("gpu")
    assert (cpu.row_block, cpu.shapes, cpu.segments) == (512, "bucket", 6)
    assert (gpu.row_block, gpu.shapes, gpu.threads, gpu.segments) == (None, "single", 1, 6)
    assert isinstance(cpu.threads, int) and cpu.threads >= 1
    fixed = Execution(threads=3, row_block=64, segments=None, shapes=2).resolved("gpu")
    assert (fixed.threads, fixed.row_block, fixed.segments, fixed.shapes) == (3, 64, None, 2)
