"""Sequential (lifelong) editing: a run equals its batches applied by hand, withdrawing a batch is
exact, the earlier batches' keys reach later solves, and the probes along the way."""

from __future__ import annotations

import importlib
import json

import chex
import numpy as np
import pytest
from conftest import full_rank_texts, interrupt_after
from test_memit import REQUESTS, TEMPLATES, TEXTS

from jaxedit.edit import apply, key_statistics
from jaxedit.edit.alphaedit import AlphaEditHparams
from jaxedit.edit.memit import MemitHparams, memit_layers
from jaxedit.edit.requests import Request
from jaxedit.edit.rome import RomeHparams
from jaxedit.edit.sequential import sequential
from jaxedit.edit.targets import TargetHparams
from jaxedit.errors import InputError
from jaxedit.evaluate.lifelong import LifelongProbe, fact_accuracy, known_facts, perplexity

sequential_module = importlib.import_module("jaxedit.edit.sequential")  # the module, not the function
MORE = [
    Request(prompt="{} plays the instrument", subject="w30 w31", target="w44"),
    Request(prompt="the language of {} is", subject="w52 w53", target="french"),
]
STREAM = [*REQUESTS, *MORE]  # five requests
TARGETS = TargetHparams(steps=6, reference="resid_post")
MEMIT = MemitHparams(layers=(0, 1), mom2_weight=5.0, targets=TARGETS)


@pytest.fixture(scope="module")
def stats(model):
    return key_statistics(model, [0, 1], full_rank_texts(model, TEXTS), cache=False, progress=False)


@pytest.fixture(scope="module")
def memit_run(model, stats):
    return sequential(model, STREAM, "memit", 1, stats, MEMIT, templates=TEMPLATES, progress=False)


def test_a_sequence_equals_its_batches_applied_by_hand(model, stats, memit_run) -> None:
    current, earlier = model, {}
    for request, delta in zip(STREAM, memit_run.deltas, strict=True):
        solved = memit_layers(
            current, [request], stats, MEMIT, templates=TEMPLATES, earlier_keys=earlier, progress=False
        )
        np.testing.assert_allclose(delta.left, solved.delta.left, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(delta.right, solved.delta.right, rtol=1e-5, atol=1e-7)
        current = apply(current, solved.delta)
        for layer, k in solved.keys.items():
            earlier[layer] = earlier.get(layer, 0.0) + k.astype(np.float64).T @ k
    chex.assert_trees_all_close(memit_run.model.params, current.params, rtol=1e-5, atol=1e-6)
    assert [b["batch"] for b in memit_run.batches] == [1, 2, 3, 4, 5]
    assert set(memit_run.earlier_keys) == {0, 1}


def test_withdrawing_batch_3_of_5_leaves_the_other_four(model, memit_run) -> None:
    deltas = memit_run.deltas
    journal = memit_run.journal
    withdrawn = journal.withdraw(deltas[2].id)
    by_hand = model
    for delta in (deltas[0], deltas[1], deltas[3], deltas[4]):
        by_hand = apply(by_hand, delta)
    chex.assert_trees_all_equal(withdrawn.params, by_hand.params)
    assert [d.id for d in withdrawn.edits] == [deltas[i].id for i in (0, 1, 3, 4)]
    journal.apply(deltas[2])  # back, as the last entry now


def test_earlier_keys_keep_earlier_edits_in_place(model, stats) -> None:
    """With the running `K_pᵀK_p`, the second batch's update moves the first batch's keys less."""
    hp = MemitHparams(layers=(1,), mom2_weight=5.0, targets=TARGETS)
    kept = sequential(model, STREAM[:2], "memit", 1, stats, hp, templates=TEMPLATES, progress=False)
    free = sequential(
        model, STREAM[:2], "memit", 1, stats, hp, templates=TEMPLATES, keep_keys=False, progress=False
    )
    first = memit_layers(model, STREAM[:1], stats, hp, templates=TEMPLATES, progress=False).keys[1]

    def moved(run) -> float:
        return float(np.linalg.norm(first @ run.deltas[1].dense()[0]))

    assert moved(kept) < 0.5 * moved(free)


def test_alphaedit_and_rome_sequences_and_probes(model, stats, tmp_path) -> None:
    from jaxedit.evaluate.counterfact import CounterfactCase

    cases = [
        CounterfactCase(
            case_id=str(i),
            request=r,
            target_true="paris",
            paraphrases=(r.text,),
            neighborhood=("the city of",),
            generation_prompts=(),
            layout="easyedit",
        )
        for i, r in enumerate(STREAM[:4])
    ]
    passages = [("the capital of france", "is paris and the language is french")]
    known = [("the eiffel tower is located in the city of", "paris")]
    probe = LifelongProbe(counterfact=cases, passages=passages, known=known, generation_tokens=0)
    hp = AlphaEditHparams(layers=(0, 1), threshold=1e-3, l2=0.1, targets=TARGETS)
    run = sequential(
        model, STREAM[:4], "alphaedit", 2, stats, hp, probe=probe, templates=TEMPLATES, progress=False
    )
    assert [d.method for d in run.deltas] == ["alphaedit"] * 2 and run.deltas[0].left.shape[1] == 2
    assert [p["batches"] for p in run.probes] == [0, 1, 2] and [p["edits"] for p in run.probes] == [0, 2, 4]
    assert "counterfact" not in run.probes[0] and run.probes[2]["counterfact"]["n"] == 4
    assert run.probes[0]["perplexity"] == pytest.approx(perplexity(model, passages), rel=1e-3)
    assert run.probes[2]["perplexity"] == pytest.approx(perplexity(run.model, passages), rel=1e-3)
    assert run.probes[2]["known_accuracy"] == fact_accuracy(run.model, known)
    rome = sequential(
        model, STREAM[:2], "rome", 2, stats, RomeHparams(layer=1, targets=TARGETS), templates=TEMPLATES,
        progress=False,
    )  # fmt: skip
    assert len(rome.deltas) == 1 and rome.deltas[0].method == "rome-seq" and rome.deltas[0].left.shape[1] == 2


def test_known_facts_are_those_the_model_gets_right(model) -> None:
    from jaxedit.core.predict import next_tokens

    tops = next_tokens(model, [r.text for r in STREAM], k=2)
    first = [(t.prompt, t.tokens[0].strip()) for t in tops]  # the model's own top-1 answers
    second = [(t.prompt, t.tokens[1].strip()) for t in tops]
    records = [{"prompt": p, "attribute": a} for p, a in first + second]
    assert known_facts(model, records) == first
    assert fact_accuracy(model, first) == 100.0 and fact_accuracy(model, second) == 0.0


def test_a_checkpointed_run_resumes_where_it_stopped(model, stats, memit_run, tmp_path, monkeypatch) -> None:
    """Stopped during batch 4 of 5, the run resumes from its checkpoint and ends as the uninterrupted
    run did; a run of other settings or other first requests is refused and changes nothing."""
    folder = tmp_path / "run"

    def probe(m, done, count):
        return {"seen": len(done)}

    def run(requests=STREAM, batch_size=1):
        return sequential(
            model, requests, "memit", batch_size, stats, MEMIT, templates=TEMPLATES, probe=probe,
            checkpoint=folder, progress=False,
        )  # fmt: skip

    interrupt_after(monkeypatch, sequential_module, "memit_layers", 3)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.undo()
    assert json.loads((folder / "sequential.json").read_text())["batches_done"] == 3
    calls = []
    real = sequential_module.memit_layers
    monkeypatch.setattr(sequential_module, "memit_layers", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = run()
    assert len(calls) == 2  # batches 4 and 5 only
    uninterrupted = sorted(memit_run.deltas, key=lambda d: d.info["batch"])
    for mine, theirs in zip(resumed.deltas, uninterrupted, strict=True):
        np.testing.assert_allclose(mine.left, theirs.left, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(mine.right, theirs.right, rtol=1e-6, atol=1e-8)
    chex.assert_trees_all_close(resumed.model.params, memit_run.model.params, rtol=1e-5, atol=1e-6)
    for layer, k in memit_run.earlier_keys.items():
        np.testing.assert_allclose(resumed.earlier_keys[layer], k, rtol=1e-9)
    assert [p["batches"] for p in resumed.probes] == [0, 1, 2, 3, 4, 5]
    assert [p["seen"] for p in resumed.probes] == [0, 1, 2, 3, 4, 5]
    assert [b["batch"] for b in resumed.batches] == [1, 2, 3, 4, 5]

    saved = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(InputError, match="batch_size differ"):
        run(batch_size=2)
    with pytest.raises(InputError, match="other requests"):
        run([*MORE, *REQUESTS])
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == saved


def test_bad_sequences_are_refused(model, stats) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        sequential(model, STREAM, "memit", 0, stats, MEMIT, templates=TEMPLATES, progress=False)
    with pytest.raises(ValueError, match="supports"):
        sequential(model, STREAM, "ft", 1, stats, MEMIT, templates=TEMPLATES, progress=False)
    with pytest.raises(ValueError, match="no edit requests"):
        sequential(model, [], "memit", 1, stats, MEMIT, templates=TEMPLATES, progress=False)


def test_cli_eval_sequential_writes_the_probes(tiny_dirs, tmp_path, capsys) -> None:
    import json

    from jaxedit import cli

    records = [
        {"case_id": i, "prompt": r.prompt.replace("{}", r.subject), "subject": r.subject, "target_new": r.target,
         "ground_truth": "paris", "rephrase_prompt": r.prompt.replace("{}", r.subject), "locality_prompt": "the city of"}
        for i, r in enumerate(STREAM[:3])
    ]  # fmt: skip
    (tmp_path / "cf.json").write_text(json.dumps(records))
    (tmp_path / "held.txt").write_text(" = heading = \n" + " ".join(TEXTS[:2]) + "\n")
    (tmp_path / "known.json").write_text(
        json.dumps([{"prompt": "the capital of france is", "attribute": "paris"}])
    )
    hp = {"layers": [0, 1], "threshold": 1e-3, "l2": 0.1, "targets": {"steps": 3, "reference": "resid_post"}}
    (tmp_path / "alpha.json").write_text(json.dumps(hp))
    args = [
        "eval",
        str(tiny_dirs["llama_gqa_untied"]),
        "--method",
        "alphaedit",
        "--sequential",
        "--batch",
        "2",
    ]
    args += [
        "--dataset",
        str(tmp_path / "cf.json"),
        "--out",
        str(tmp_path / "run"),
        "--hparams",
        str(tmp_path / "alpha.json"),
    ]
    args += ["--stats-samples", "20", "--max-len", "16", "--generation-tokens", "0"]
    args += ["--held-out", str(tmp_path / "held.txt"), "--known", str(tmp_path / "known.json")]
    # a tiny held-out file has no 64-word paragraph: a one-line error, nothing written
    assert cli.main(args) == 2
    assert "holds no paragraph" in capsys.readouterr().err and not (tmp_path / "run").exists()
    (tmp_path / "held.txt").write_text(" ".join(TEXTS) + "\n")
    assert cli.main(args) == 0
    result = json.loads((tmp_path / "run" / "lifelong.json").read_text())
    assert [p["edits"] for p in result["probes"]] == [0, 2, 3]
    assert result["probes"][-1]["counterfact"]["n"] == 3 and "perplexity" in result["probes"][0]
    assert [b["edits"] for b in result["batches"]] == [2, 1]
    # the same command again resumes from the run's checkpoint: nothing is edited a second time
    saved = json.loads((tmp_path / "run" / "checkpoint" / "sequential.json").read_text())
    assert saved["batches_done"] == 2
    assert cli.main(args) == 0
    again = json.loads((tmp_path / "run" / "lifelong.json").read_text())
    assert again["batches"] == result["batches"] and again["probes"] == result["probes"]
    assert cli.main([a if a != "alphaedit" else "ft" for a in args]) == 2
    assert "--sequential runs rome, memit, pmet, alphaedit" in capsys.readouterr().err
