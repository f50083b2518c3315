"""EasyEdit hyperparameter files read into jaxedit's settings: every field mapped, refused or warned."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import yaml

import jaxedit
from jaxedit.edit import apply, rome
from jaxedit.edit.easyedit import read_easyedit_hparams
from jaxedit.edit.memit import MemitHparams
from jaxedit.edit.requests import Request
from jaxedit.edit.targets import optimise_targets
from jaxedit.errors import InputError

MODULES = {
    "rewrite_module_tmp": "model.layers.{}.mlp.down_proj",
    "layer_module_tmp": "model.layers.{}",
    "mlp_module_tmp": "model.layers.{}.mlp",
    "attn_module_tmp": "model.layers.{}.self_attn",
    "ln_f_module": "model.norm",
    "lm_head_module": "lm_head",
}
ROME = {
    "alg_name": "ROME", "model_name": "./hugging_cache/llama-2-7b", "stats_dir": "./data/stats", "device": 1,
    "layers": [5], "fact_token": "subject_last", "v_num_grad_steps": 25, "v_lr": 0.5, "v_loss_layer": 31,
    "v_weight_decay": 1e-3, "clamp_norm_factor": 4, "kl_factor": 0.0625, "mom2_adjustment": False,
    "context_template_length_params": [[5, 10], [10, 10]], **MODULES, "mom2_dataset": "wikipedia",
    "mom2_n_samples": 100000, "mom2_dtype": "float32",
}  # fmt: skip
MEMIT = {
    "alg_name": "MEMIT", "layers": [4, 5, 6, 7, 8], "clamp_norm_factor": 4, "layer_selection": "all",
    "fact_token": "subject_last", "v_num_grad_steps": 25, "v_lr": 0.5, "v_loss_layer": 31, "v_weight_decay": 1e-3,
    "kl_factor": 0.0625, "mom2_adjustment": True, "mom2_update_weight": 15000, **MODULES,
    "mom2_dataset": "wikipedia", "mom2_n_samples": 100000, "mom2_dtype": "float32",
}  # fmt: skip
PMET = {
    **MEMIT, "alg_name": "PMET", "clamp_norm_factor": 1, "v_num_grad_steps": 20, "v_weight_decay": 0.5,
    "rewrite_module_tmps": ["model.layers.{}.mlp.down_proj"], "nll_loss_factor": 1, "model_parallel": False,
}  # fmt: skip


def written(tmp_path, fields: dict) -> str:
    path = tmp_path / "hparams.yaml"
    path.write_text(yaml.safe_dump(fields))
    return str(path)


def test_rome_file_maps_every_setting(tmp_path) -> None:
    settings = read_easyedit_hparams(written(tmp_path, ROME))
    hp = settings.hparams
    assert settings.method == "rome" and hp.layer == 5 and hp.prefixes == ((5, 10), (10, 10))
    t = hp.targets
    assert (t.steps, t.lr, t.weight_decay, t.clamp, t.kl_factor, t.key_token) == (
        25,
        0.5,
        1e-3,
        4,
        0.0625,
        "subject",
    )
    assert settings.statistics_samples == 100000 and settings.identity_statistics


def test_memit_and_pmet_files_map_every_setting(tmp_path) -> None:
    memit = read_easyedit_hparams(MEMIT)
    assert memit.method == "memit" and isinstance(memit.hparams, MemitHparams)
    assert memit.hparams.layers == (4, 5, 6, 7, 8) and memit.hparams.mom2_weight == 15000.0
    t = memit.hparams.targets
    assert (t.steps, t.clamp, t.weight_decay, t.reference, t.attn_delta) == (25, 4, 1e-3, "resid_post", False)
    pmet = read_easyedit_hparams(written(tmp_path, PMET))
    t = pmet.hparams.targets
    assert pmet.method == "pmet" and pmet.hparams.spread == "sqrt" and pmet.hparams.mom2_weight == 15000.0
    assert (t.steps, t.clamp, t.weight_decay, t.lr, t.attn_delta, t.nll_schedule) == (
        20,
        1,
        0.5,
        0.5,
        True,
        True,
    )
    assert not memit.identity_statistics and not pmet.identity_statistics


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"alg_name": "KN"}, "not one of ROME, MEMIT, PMET"),
        ({"mom2_cache": True}, r"cannot honour for ROME: \['mom2_cache'\]"),
        ({"fact_token": "subject_first"}, "fact_token 'subject_first'"),
        ({"layers": [4, 5]}, "ROME edits one layer"),
        ({"layers": []}, "non-empty list"),
        ({"rewrite_module_tmp": "model.layers.{}.self_attn.o_proj"}, "MLP output projection"),
        ({"v_lr": -1.0}, "lr"),
    ],
)
def test_what_cannot_be_honoured_is_refused_in_one_line(changes, match) -> None:
    with pytest.raises(InputError, match=match) as err:
        read_easyedit_hparams({**ROME, **changes})
    assert "\n" not in str(err.value)


def test_memit_refusals_and_warnings(tmp_path) -> None:
    with pytest.raises(InputError, match="layer_selection 'random'"):
        read_easyedit_hparams({**MEMIT, "layer_selection": "random"})
    with pytest.raises(InputError, match="nll_loss_factor 2"):
        read_easyedit_hparams({**PMET, "nll_loss_factor": 2})
    with pytest.warns(UserWarning, match="fp16 ignored"):
        read_easyedit_hparams({**MEMIT, "fp16": True})
    with pytest.warns(UserWarning, match="mom2_adjustment false ignored"):
        read_easyedit_hparams({**MEMIT, "mom2_adjustment": False})
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [1, 2\n")
    with pytest.raises(InputError, match="cannot read EasyEdit hyperparameters"):
        read_easyedit_hparams(bad)


def test_layers_are_checked_against_the_model_and_rome_without_covariance_runs(tiny_dirs) -> None:
    tiny = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    model = tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))
    with pytest.raises(InputError, match="do not fit a model of 3 layers"):
        read_easyedit_hparams(ROME, model)
    fields = {**ROME, "layers": [1], "v_loss_layer": 2, "v_num_grad_steps": 5}
    with pytest.raises(InputError, match="v_loss_layer 1"):
        read_easyedit_hparams({**fields, "v_loss_layer": 1}, model)
    settings = read_easyedit_hparams(fields, model)
    request = Request(prompt="the mother tongue of {} is", subject="danielle darrieux", target="english")
    templates = ["{}", "the city of rome . {}"]
    hp = dataclasses.replace(settings.hparams, prefixes=((2, 1),))
    delta = rome(model, request, settings.statistics(model), hp, templates=templates)
    # mom2_adjustment false: C = I, so the update's left vector is the mean key k̄ over k*·k̄
    targets = optimise_targets(model, [request], 1, templates, hp.targets)
    k, key = targets.key_mean[0].astype(np.float64), targets.key[0].astype(np.float64)
    np.testing.assert_allclose(delta.left[0, 0], k / (key @ k), rtol=1e-4, atol=1e-7)
    assert np.abs(np.asarray(apply(model, delta).params["layers"]["mlp"]["out"]["kernel"][1])).max() > 0


def test_cli_edit_takes_an_easyedit_file_and_refuses_another_methods(tiny_dirs, tmp_path, capsys) -> None:
    import json

    from jaxedit import cli

    model = str(tiny_dirs["llama_gqa_untied"])
    fields = {**ROME, "layers": [1], "v_loss_layer": 2, "v_num_grad_steps": 3}
    args = ["edit", model, "--method", "rome", "--prompt", "the mother tongue of {} is", "--subject",
            "danielle darrieux", "--target", "english", "--max-new-tokens", "1"]  # fmt: skip
    assert cli.main([*args, "--hparams", written(tmp_path, fields), "--save", str(tmp_path / "edited")]) == 0
    journal = json.loads((tmp_path / "edited" / "journal" / "journal.json").read_text())
    (entry,) = journal["entries"]
    assert entry["method"] == "rome" and entry["layers"] == [1]
    (tmp_path / "pmet.yaml").write_text(yaml.safe_dump({**PMET, "layers": [1], "v_loss_layer": 2}))
    capsys.readouterr()
    assert cli.main([*args, "--hparams", str(tmp_path / "pmet.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "EasyEdit's PMET file; run with --method pmet" in err and "\n" not in err


CALL = dict(
    prompts=["the mother tongue of danielle darrieux is", "the capital of france is"],
    ground_truth=["french", "paris"],
    target_new=["english", "rome"],
    subject=["danielle darrieux", "france"],
    rephrase_prompts=["danielle darrieux was french and the mother tongue of danielle darrieux is", "a capital of france is"],
    locality_inputs={"neighborhood": {"prompt": ["the eiffel tower is located in the city of", "rome is the capital city of"], "ground_truth": ["paris", "a w40"]}},
    portability_inputs={"synonym": {"prompt": ["the language of danielle darrieux is", "france has its capital in"], "ground_truth": ["english", "rome"]}},
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_llama(tiny_dirs):
    tiny = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    return tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))


def test_easyedit_call_shape_scores_what_it_names(tiny_llama) -> None:
    from jaxedit.edit.finetune import FinetuneHparams, finetune
    from jaxedit.evaluate.easyedit_calls import edit_like_easyedit
    from jaxedit.evaluate.metrics import target_scores

    model = tiny_llama

    def edit(m, request):  # unconstrained fine-tuning: strong enough to flip a tiny model's answer
        return finetune(m, request, FinetuneHparams(layer=1, lr=5e-2, steps=20))

    results = edit_like_easyedit(model, edit, **CALL, progress=False)
    assert [r["case_id"] for r in results] == [0, 1]
    for i, result in enumerate(results):
        request = Request(prompt=CALL["prompts"][i].replace(CALL["subject"][i], "{}", 1), subject=CALL["subject"][i],
                          target=CALL["target_new"][i])  # fmt: skip
        edited = apply(model, edit(model, request))
        pairs = [(CALL["prompts"][i], CALL["target_new"][i]), (CALL["rephrase_prompts"][i], CALL["target_new"][i]),
                 (CALL["portability_inputs"]["synonym"]["prompt"][i], CALL["portability_inputs"]["synonym"]["ground_truth"][i]),
                 (CALL["locality_inputs"]["neighborhood"]["prompt"][i], CALL["locality_inputs"]["neighborhood"]["ground_truth"][i])]  # fmt: skip
        _, before, top_before = target_scores(model, pairs)
        _, after, top_after = target_scores(edited, pairs)
        assert result["pre"]["rewrite_acc"] == pytest.approx(before[0].mean())
        assert result["post"]["rewrite_acc"] == pytest.approx(after[0].mean())
        assert result["post"]["rephrase_acc"] == pytest.approx(after[1].mean())
        assert result["post"]["portability"]["synonym_acc"] == pytest.approx(after[2].mean())
        assert result["post"]["locality"]["neighborhood_acc"] == pytest.approx(
            np.mean(top_after[3] == top_before[3])
        )
    assert results[0]["post"]["rewrite_acc"] > results[0]["pre"]["rewrite_acc"]  # the edit took


def test_easyedit_call_shape_refuses_bad_input_before_editing(tiny_llama) -> None:
    from jaxedit.evaluate.easyedit_calls import edit_like_easyedit

    def edit(m, request):
        raise AssertionError("no edit may run on bad input")

    with pytest.raises(InputError, match="target_new has 1 entries for 2 prompts"):
        edit_like_easyedit(tiny_llama, edit, **{**CALL, "target_new": ["english"]})
    with pytest.raises(InputError, match="subject 'rome' does not occur"):
        edit_like_easyedit(tiny_llama, edit, **{**CALL, "subject": ["danielle darrieux", "rome"]})
    with pytest.raises(InputError, match="exactly 'prompt' and 'ground_truth'"):
        edit_like_easyedit(tiny_llama, edit, **{**CALL, "locality_inputs": {"n": {"prompt": ["a", "b"]}}})


KNOWEDIT = [
    {"subject": "danielle darrieux", "prompt": "the mother tongue of danielle darrieux is", "target_new": "english",
     "ground_truth": "french",
     "portability": {"Reasoning": [{"prompt": "the language of danielle darrieux is", "ground_truth": "english"},
                                   {"prompt": "danielle darrieux was a w40 of", "ground_truth": "english"}]},
     "locality": {"Relation_Specificity": [{"prompt": "the city of danielle darrieux is", "ground_truth": "paris"}]}},
    {"subject": "france", "prompt": "the capital of france is", "target_new": "rome", "ground_truth": "paris",
     "locality": {"Relation_Specificity": [{"prompt": "the language of france is", "ground_truth": "french"}]}},
]  # fmt: skip


def test_knowedit_records_score_every_portability_prompt(tiny_llama) -> None:
    from jaxedit.edit.finetune import FinetuneHparams, finetune
    from jaxedit.evaluate.easyedit_calls import edit_like_easyedit, knowedit_call
    from jaxedit.evaluate.metrics import target_scores

    def edit(m, request):
        return finetune(m, request, FinetuneHparams(layer=1, lr=5e-2, steps=20))

    call = knowedit_call(KNOWEDIT)
    assert set(call["portability_inputs"]) == {"Reasoning"}
    first, second = edit_like_easyedit(tiny_llama, edit, **call, progress=False)
    request = Request(prompt="the mother tongue of {} is", subject="danielle darrieux", target="english")
    edited = apply(tiny_llama, edit(tiny_llama, request))
    reasoning = KNOWEDIT[0]["portability"]["Reasoning"]
    _, correct, _ = target_scores(edited, [(x["prompt"], x["ground_truth"]) for x in reasoning])
    expected = np.mean([c.mean() for c in correct])  # the mean over the record's two prompts
    assert first["post"]["portability"]["Reasoning_acc"] == pytest.approx(expected)
    assert second["post"]["portability"]["Reasoning_acc"] is None  # the second record has none
    assert 0.0 <= second["post"]["locality"]["Relation_Specificity_acc"] <= 1.0
    with pytest.raises(InputError, match=r"record 0 lacks \['target_new'\]"):
        knowedit_call([{"subject": "x", "prompt": "x is"}])


def test_knowedit_file_from_shared_data_becomes_a_call() -> None:
    import json
    from pathlib import Path

    from jaxedit.evaluate.easyedit_calls import knowedit_call

    path = Path(__file__).parents[2] / "shared" / "data" / "knowedit_wiki_counterfact" / "test_cf.json"
    if not path.exists():
        pytest.skip("../shared/data/knowedit_wiki_counterfact is absent")
    records = json.loads(path.read_text())[:20]
    call = knowedit_call(records)
    assert len(call["prompts"]) == 20 and {"Reasoning", "Subject_Aliasing"} <= set(call["portability_inputs"])
    for inputs in (call["portability_inputs"], call["locality_inputs"]):
        for fields in inputs.values():
            assert [len(p) for p in fields["prompt"]] == [len(g) for g in fields["ground_truth"]]
