"""Dataset averages of causal traces: token classes, filtering, resumption, edit-layer suggestion, CLI."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jaxedit
from jaxedit import cli
from jaxedit.trace import Execution, Noise, dataset, suggest_edit_layer, trace, trace_dataset

PROMPTS = [
    ("the mother tongue of danielle darrieux is", "danielle darrieux"),
    ("the eiffel tower is located in the city of", "the eiffel tower"),
    ("paris is the capital of", "paris"),
]

QUIET = Execution(progress=False)


@pytest.fixture(scope="module")
def model(tiny_dirs):
    from test_trace import sharpened

    return sharpened(jaxedit.load_model(tiny_dirs["llama_gqa_untied"]))


@pytest.fixture(scope="module")
def records(model):
    out = []
    for prompt, subject in PROMPTS:
        ids = np.asarray([jaxedit.core.tokens.encode_one(model.tokenizer, prompt)])
        top = int(jnp.argmax(jaxedit.forward(model.params, model.config, ids).logits[0, -1]))
        out.append({"prompt": prompt, "subject": subject, "attribute": model.tokenizer.decode([top])})
    wrong = dict(out[0], attribute="english" if out[0]["attribute"] != "english" else "french")
    return [*out[:2], wrong, out[2]]


def test_token_classes_by_hand() -> None:
    classes = dataset.token_classes(8, (2, 5), "subject")
    assert classes == {
        "first subject token": [2],
        "middle subject tokens": [3],
        "last subject token": [4],
        "first subsequent token": [5],
        "further tokens": [6],
        "last token": [7],
    }
    rel = dataset.token_classes(8, (2, 4), "relation", first_real=1)
    assert rel == {"rp": [1], "fs": [2], "ms": [], "ls": [3], "fr": [4], "mr": [5, 6], "lr": [7]}


def test_average_matches_per_fact_traces_and_filters_wrong_facts(model, records, tmp_path) -> None:
    kwargs = dict(kinds=("hidden", "mlp"), noise=Noise(0.7, samples=2), window=2)
    summary = trace_dataset(model, records, out_dir=tmp_path, execution=QUIET, **kwargs)
    assert (summary.n_facts, summary.n_filtered, summary.n_considered) == (3, 1, 4)
    expected = np.zeros((model.config.n_layers, len(summary.classes)))
    counts = np.zeros(len(summary.classes))
    for record in (records[0], records[1], records[3]):
        result = trace(
            model, record["prompt"], subject=record["subject"], answer=record["attribute"], **kwargs
        )
        members = dataset.token_classes(len(result.tokens), result.subject_span, "subject")
        for c, cls in enumerate(summary.classes):
            if members[cls]:
                counts[c] += 1
                expected[:, c] += result.effect("mlp")[:, members[cls]].mean(1)
    expected = np.where(counts > 0, expected / np.maximum(counts, 1), np.nan)
    np.testing.assert_allclose(summary.aie["mlp"], expected, atol=1e-6)
    assert (tmp_path / "trace_dataset.json").exists() and (
        tmp_path / "trace_dataset.png"
    ).stat().st_size > 1000
    assert len(list((tmp_path / "facts").glob("*.json"))) == 3


def test_rerun_resumes_from_cached_facts(model, records, tmp_path, monkeypatch) -> None:
    kwargs = dict(kinds=("mlp",), noise=Noise(0.7, samples=2), window=2, corrupt="relation", execution=QUIET)
    first = trace_dataset(model, records, out_dir=tmp_path, **kwargs)

    def fail(*args, **kw):
        raise AssertionError("a cached fact was traced again")

    monkeypatch.setattr(dataset, "trace", fail)
    again = trace_dataset(model, records, out_dir=tmp_path, **kwargs)
    np.testing.assert_array_equal(np.nan_to_num(again.aie["mlp"]), np.nan_to_num(first.aie["mlp"]))
    layer, _ = suggest_edit_layer(model, again, position="last_relation")
    assert layer == int(np.nanargmax(first.aie["mlp"][:, first.classes.index("lr")]))


def test_suggest_edit_layer_needs_matching_trace(model, records) -> None:
    summary = trace_dataset(
        model, records[:1], kinds=("hidden",), noise=Noise(0.5, samples=1), window=2, execution=QUIET
    )
    with pytest.raises(ValueError, match="mlp"):
        suggest_edit_layer(model, summary)


def test_nothing_known_is_an_error(model, records) -> None:
    with pytest.raises(ValueError, match="none of the given facts"):
        trace_dataset(model, [records[2]], noise=Noise(0.5, samples=1), window=2, execution=QUIET)


def test_cli_trace_prompt_and_dataset(model, records, tmp_path, capsys) -> None:
    model_dir = str(jaxedit.save_hf(model, tmp_path / "model"))
    args = ["trace", model_dir, "--prompt", PROMPTS[0][0], "--subject", PROMPTS[0][1], "--samples", "2"]
    assert cli.main([*args, "--window", "2", "--out", str(tmp_path / "one")]) == 0
    saved = json.loads((tmp_path / "one" / "trace.json").read_text())
    assert set(saved["grids"]) == {"hidden", "mlp", "attn"} and (tmp_path / "one" / "trace.png").exists()
    data = tmp_path / "facts.json"
    data.write_text(json.dumps(records))
    code = cli.main(
        ["trace", model_dir, "--dataset", str(data), "--n", "2", "--kinds", "mlp", "--samples", "1", "--window", "2",
         "--shapes", "2", "--out", str(tmp_path / "many")]
    )  # fmt: skip
    assert code == 0
    assert "peak MLP indirect effect at the last subject token: layer" in capsys.readouterr().out
    summary = json.loads((tmp_path / "many" / "trace_dataset.json").read_text())
    assert summary["n_facts"] == 2 and (tmp_path / "many" / "trace_dataset.png").exists()
    assert cli.main(["trace", model_dir, "--out", str(tmp_path / "x")]) == 2
    assert "either --prompt" in capsys.readouterr().err
    bad_budget = [
        "trace",
        model_dir,
        "--dataset",
        str(data),
        "--max-minutes",
        "0",
        "--out",
        str(tmp_path / "y"),
    ]
    with pytest.raises(SystemExit) as stopped:  # argparse refuses it: one line, status 2
        cli.main(bad_budget)
    assert stopped.value.code == 2 and not (tmp_path / "y").exists()
    assert "--max-minutes: must be a positive number" in capsys.readouterr().err


def test_single_shape_runs_one_program_per_kind_with_the_same_averages(model, records, monkeypatch) -> None:
    from jaxedit.trace import program

    kwargs = dict(kinds=("hidden", "mlp"), noise=Noise(0.7, samples=2), window=2)
    shapes = set()

    def padded(shapes: str | int) -> Execution:
        return Execution(progress=False, bucket=2, shapes=shapes)

    grid_program = program.grid_program

    def recording(params, config, plan, *args):
        shapes.add((plan.kind, plan.length, plan.live))
        return grid_program(params, config, plan, *args)

    monkeypatch.setattr(program, "grid_program", recording)
    bucketed = trace_dataset(model, records, execution=padded("bucket"), **kwargs)
    assert len(shapes) > 2  # the prompts' shapes differ
    shapes.clear()
    single = trace_dataset(model, records, execution=padded("single"), **kwargs)
    assert len(shapes) == 2 and {kind for kind, *_ in shapes} == {"hidden", "mlp"}
    for kind in kwargs["kinds"]:
        np.testing.assert_allclose(single.aie[kind], bucketed.aie[kind], atol=1e-5)
    shapes.clear()
    grouped = trace_dataset(model, records, execution=padded(2), **kwargs)
    assert len(shapes) == 4  # two shape groups, two kinds
    for kind in kwargs["kinds"]:
        np.testing.assert_allclose(grouped.aie[kind], bucketed.aie[kind], atol=1e-5)
    for bad in ("ragged", 0, 1.5):
        with pytest.raises(ValueError, match="shapes must be"):
            trace_dataset(model, records, execution=padded(bad), **kwargs)


def test_shape_groups_minimise_the_padded_work() -> None:
    import itertools

    from jaxedit.trace import schedule

    rng = np.random.default_rng(0)
    prompts = [(int(n), int(rng.integers(0, n))) for n in rng.integers(3, 30, size=40)]
    bucket, layers, window = 4, 6, 2

    def work(pads):
        return sum(
            schedule.build_plan("hidden", layers, *pad, 1, window, "code", None, None).recomputed_rows()
            for pad in pads
        )

    assert (
        dataset.shape_groups(prompts, bucket, 1, layers, window)
        == [dataset.common_shape(prompts, bucket)] * 40
    )
    lengths = sorted({-(-n // bucket) * bucket for n, _ in prompts})
    many = dataset.shape_groups(prompts, bucket, len(lengths), layers, window)
    assert [pad[0] for pad in many] == [-(-n // bucket) * bucket for n, _ in prompts]
    for groups in (2, 3):
        pads = dataset.shape_groups(prompts, bucket, groups, layers, window)
        assert len(set(pads)) <= groups
        for pad, (n, first) in zip(pads, prompts, strict=True):  # every prompt fits its shape
            assert pad[0] >= n and pad[1] >= min(-(-(n - first) // bucket) * bucket, pad[0])
        best = min(  # every split of the sorted lengths into at most `groups` contiguous ranges
            work(
                [
                    dataset.common_shape(
                        [q for q in prompts if lo <= -(-q[0] // bucket) * bucket <= hi], bucket
                    )
                    for n, _ in prompts
                    for lo, hi in [
                        next((lo, hi) for lo, hi in ranges if lo <= -(-n // bucket) * bucket <= hi)
                    ]
                ]
            )
            for cuts in itertools.chain.from_iterable(
                itertools.combinations(range(1, len(lengths)), c) for c in range(groups)
            )
            for ranges in [
                [(lengths[a], lengths[b - 1]) for a, b in zip((0, *cuts), (*cuts, len(lengths)), strict=True)]
            ]
        )
        assert work(pads) == best
    with pytest.raises(ValueError, match="at least 1"):
        dataset.shape_groups(prompts, bucket, 0, layers, window)


def test_common_shape_covers_every_prompt() -> None:
    assert dataset.common_shape([(7, 2), (10, 1), (4, 0)], 4) == (12, 12)
    assert dataset.common_shape([(7, 5), (9, 7)], 1) == (9, 2)


def test_batched_predictions_equal_each_prompt_alone(model) -> None:
    prompts = [p for p, _ in PROMPTS] + ["a", "the capital of the country where the river flows is"]
    rows = [jaxedit.core.tokens.encode_one(model.tokenizer, p) for p in prompts]
    alone = [
        int(jnp.argmax(jaxedit.forward(model.params, model.config, np.asarray([r])).logits[0, -1]))
        for r in rows
    ]
    # batches of 2 (the last filled with a copy), lengths padded to 8 and 16
    assert dataset.greedy_next_tokens(model, rows, batch=2).tolist() == alone
    assert dataset.greedy_next_tokens(model, rows, batch=32, multiple=1).tolist() == alone
    with pytest.raises(ValueError, match="batch must be"):
        dataset.greedy_next_tokens(model, rows, batch=0)


def test_known_facts_stop_at_the_record_that_completes_n(model, records) -> None:
    for batch in (1, 3, 32):
        kept, considered = dataset.known_facts(model, records, "subject", 2, batch=batch)
        assert [k[0] for k in kept] == [records[0]["prompt"], records[1]["prompt"]] and considered == 2
        kept, considered = dataset.known_facts(model, records, "subject", None, batch=batch)
        assert [k[0] for k in kept] == [records[i]["prompt"] for i in (0, 1, 3)] and considered == 4


def test_time_budget_averages_the_first_facts_only(model, records, tmp_path) -> None:
    kwargs = dict(kinds=("mlp",), noise=Noise(0.7, samples=2), window=2, execution=QUIET, out_dir=tmp_path)
    full = trace_dataset(model, records, **kwargs)
    assert full.n_untraced == 0
    order = [r["prompt"] for r in records if r is not records[2]]  # the known facts, in order
    cached = sorted(
        (tmp_path / "facts").glob("*.json"), key=lambda f: order.index(json.loads(f.read_text())["prompt"])
    )
    assert len(cached) == 3
    cached[1].unlink()  # fact 1 must be traced again, but the budget is already spent
    partial = trace_dataset(model, records, max_seconds=1e-9, **kwargs)
    assert (partial.n_facts, partial.n_untraced) == (1, 2)  # fact 2 is cached but after the gap
    first = json.loads(cached[0].read_text())
    members = dataset.token_classes(len(first["tokens"]), tuple(first["subject_span"]), "subject")
    for c, cls in enumerate(partial.classes):
        grid = np.asarray(first["grids"]["mlp"])
        expected = (grid[:, members[cls]] - first["p_corrupt"]).mean(1) if members[cls] else np.nan
        np.testing.assert_allclose(partial.aie["mlp"][:, c], expected, atol=1e-6)
    for f in cached[:1] + cached[2:]:
        f.unlink()
    with pytest.raises(ValueError, match="ran out before the first fact"):
        trace_dataset(model, records, max_seconds=1e-9, **kwargs)
    with pytest.raises(ValueError, match="max_seconds must be"):
        trace_dataset(model, records, max_seconds=0, **kwargs)


def test_concurrent_workers_compile_kinds_together_with_the_same_averages(model, records) -> None:
    kwargs = dict(kinds=("hidden", "attn"), noise=Noise(0.7, samples=2), window=2)
    one = trace_dataset(model, records, execution=Execution(progress=False, shapes="single"), **kwargs)
    three = trace_dataset(
        model, records, execution=Execution(progress=False, shapes="single", workers=3), **kwargs
    )
    for kind in kwargs["kinds"]:
        np.testing.assert_allclose(three.aie[kind], one.aie[kind], atol=1e-6)


def test_parse_shapes_option() -> None:
    assert [dataset.parse_shapes(t) for t in ("auto", "bucket", "single", "3")] == [
        "auto",
        "bucket",
        "single",
        3,
    ]
    for bad in ("0", "-2", "ragged", ""):
        with pytest.raises(ValueError, match="shapes must be"):
            dataset.parse_shapes(bad)
