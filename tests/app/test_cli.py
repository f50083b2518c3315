"""The `jaxedit` command on tiny models: info output and clear errors."""

from __future__ import annotations

import shutil

import pytest
from records import EASYEDIT_RECORD, MEND

from jaxedit import cli


def test_info_prints_family_and_parameter_count(tiny_dirs, capsys) -> None:
    assert cli.main(["info", str(tiny_dirs["neox_sequential"])]) == 0
    out = capsys.readouterr().out
    assert "gpt_neox" in out and "sequential" in out and "rotary (half, 4 dims)" in out


def test_generate_prints_prompt_and_completion(tiny_dirs, capsys) -> None:
    assert cli.main(["generate", str(tiny_dirs["gpt2"]), "the eiffel tower", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("the eiffel tower")
    assert len(out[len("the eiffel tower") :].split()) == 3  # three new word-level tokens


def test_generate_without_tokenizer_is_a_clear_error(tiny_dirs, tmp_path, capsys) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dirs["gpt2"] / name, bare / name)
    assert cli.main(["generate", str(bare), "hello"]) == 2
    assert "has no tokenizer" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(capsys) -> None:
    assert cli.main(["info", "/no/such/dir"]) == 2
    assert "neither an embedded model" in capsys.readouterr().err


EDIT_ARGS = [
    "--prompt",
    "the mother tongue of {} is",
    "--subject",
    "danielle darrieux",
    "--target",
    "english",
]


def test_edit_with_fine_tuning_saves_model_and_journal(tiny_dirs, tmp_path, capsys) -> None:
    model = str(tiny_dirs["llama_gqa_untied"])
    args = ["edit", model, "--method", "ft", *EDIT_ARGS, "--layer", "1", "--max-new-tokens", "2"]
    assert cli.main([*args, "--save", str(tmp_path / "edited")]) == 0
    out = capsys.readouterr().out
    assert "FT at layer 1" in out and "before:" in out and "after:" in out
    assert (tmp_path / "edited" / "model.safetensors").exists()
    assert (tmp_path / "edited" / "journal" / "journal.json").exists()


def test_edit_with_a_subject_missing_from_the_prompt_fails_cleanly(tiny_dirs, tmp_path, capsys) -> None:
    model = str(tiny_dirs["llama_gqa_untied"])
    args = ["edit", model, "--method", "ft", "--prompt", "the city of paris is", "--subject", "rome"]
    assert cli.main([*args, "--target", "english", "--save", str(tmp_path / "edited")]) == 2
    assert "does not occur in prompt" in capsys.readouterr().err
    assert not (tmp_path / "edited").exists()


def test_eval_writes_a_summary(tiny_dirs, tmp_path, capsys) -> None:
    import json

    data = tmp_path / "cf.json"
    data.write_text(json.dumps([EASYEDIT_RECORD]))
    model = str(tiny_dirs["llama_gqa_untied"])
    args = ["eval", model, "--method", "ft-l", "--dataset", str(data), "--out", str(tmp_path / "run")]
    assert cli.main([*args, "--layer", "1", "--generation-tokens", "3"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["ft-l"]["n"] == 1 and summary["unedited"]["n"] == 1
    assert "| ft-l |" in capsys.readouterr().out


PMET_ATTN_FILE = {  # a user's copy of the PMET settings with the attention-projection ablation on
    "layers": [0, 1], "mom2_weight": 1.0, "spread": "sqrt", "update_attn": True, "method": "pmet",
    "targets": {"steps": 3, "reference": "mlp_out", "attn_delta": True, "nll_schedule": True},
}  # fmt: skip


@pytest.mark.parametrize("method", ["memit", "pmet-attn"])
def test_eval_memit_edits_records_in_batches(tiny_dirs, tmp_path, capsys, method) -> None:
    import json

    records = [
        {
            "case_id": i,
            "prompt": prompt,
            "subject": subject,
            "target_new": new,
            "ground_truth": true,
            "rephrase_prompt": rephrase,
            "locality_prompt": "the capital of france is",
        }
        for i, (prompt, subject, new, true, rephrase) in enumerate(
            [
                (
                    "the eiffel tower is located in the city of",
                    "the eiffel tower",
                    "rome",
                    "paris",
                    "the eiffel tower is in",
                ),
                (
                    "the mother tongue of danielle darrieux is",
                    "danielle darrieux",
                    "english",
                    "french",
                    "danielle darrieux speaks",
                ),
                ("the capital of france is", "france", "rome", "paris", "france has the capital"),
            ]
        )
    ]
    data = tmp_path / "cf.json"
    data.write_text(json.dumps(records))
    model = str(tiny_dirs["llama_gqa_untied"])
    name = method.split("-")[0]
    args = ["eval", model, "--method", name, "--dataset", str(data), "--out", str(tmp_path / "run")]
    args += ["--batch", "2", "--stats-samples", "20", "--max-len", "16", "--generation-tokens", "0"]
    if method == "pmet-attn":
        (tmp_path / "pmet.json").write_text(json.dumps(PMET_ATTN_FILE))
        args += ["--hparams", str(tmp_path / "pmet.json")]
    else:
        args += ["--layers", "0", "1"]
    assert cli.main(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary[name]["n"] == 3 and summary["batch"] == 2
    cases = [json.loads((tmp_path / "run" / "cases" / f"{i}.json").read_text()) for i in range(3)]
    assert cases[0]["edit"]["id"] == cases[1]["edit"]["id"] != cases[2]["edit"]["id"]  # two batches
    assert cases[0]["edit"]["rank"] == 2 and cases[2]["edit"]["rank"] == 1


def test_eval_recognises_zsre_files(tiny_dirs, tmp_path, capsys) -> None:
    import json

    data = tmp_path / "zsre.json"
    data.write_text(json.dumps([MEND]))
    model = str(tiny_dirs["llama_gqa_untied"])
    args = [
        "eval",
        model,
        "--method",
        "ft",
        "--dataset",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--layer",
        "1",
    ]
    assert cli.main(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["protocol"].startswith("zsRE") and summary["ft"]["n"] == 1
    assert "| ft |" in capsys.readouterr().out


def test_edit_with_ireva_reports_the_firing_neuron_and_saves_a_journal(tiny_dirs, tmp_path, capsys) -> None:
    model = str(tiny_dirs["llama_gqa_untied"])
    args = ["edit", model, "--method", "ireva-init", *EDIT_ARGS, "--max-new-tokens", "2"]
    assert cli.main([*args, "--check", "the capital of france is", "--save", str(tmp_path / "edited")]) == 0
    out = capsys.readouterr().out
    assert "ireva-init at layer 1: 1 neurons" in out  # the tiny model has 3 layers: the second-to-last
    assert "score 1.000, fires): 'the mother tongue of danielle darrieux is'" in out
    assert (tmp_path / "edited" / "journal" / "journal.json").exists()
    assert not (tmp_path / "edited" / "model.safetensors").exists()  # adaptors cannot go into an HF file


def test_eval_ireva_edits_a_zsre_batch(tiny_dirs, tmp_path, capsys) -> None:
    import json

    records = [
        {"subject": s, "src": f"the mother tongue of {s} is", "alt": t, "rephrase": f"{s} speaks the language",
         "loc": "nq question: the capital of france is", "loc_ans": "paris"}
        for s, t in (("danielle darrieux", "english"), ("the eiffel tower", "rome"))
    ]  # fmt: skip
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(records))
    model = str(tiny_dirs["llama_gqa_untied"])
    args = ["eval", model, "--method", "ireva", "--dataset", str(data), "--out", str(tmp_path / "run")]
    assert cli.main([*args, "--batch", "2"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["ireva"]["n"] == 2 and summary["batch"] == 2
    case = json.loads((tmp_path / "run" / "cases" / "0.json").read_text())
    assert case["edit"]["method"] == "ireva" and case["edit"]["rank"] == 2  # one neuron per fact


def test_lens_writes_json_and_png(tiny_dirs, tmp_path, capsys) -> None:
    import json

    facts = [
        {"prompt": "the mother tongue of danielle darrieux is", "relation_id": "P103", "attribute": "french"},
        {"prompt": "the eiffel tower is located in the city of", "relation_id": "P131", "attribute": "paris"},
        {"prompt": "rome is the capital of", "relation_id": "P9", "attribute": "italy"},
    ]
    data, attributes = tmp_path / "facts.json", tmp_path / "attributes.json"
    data.write_text(json.dumps(facts))
    attributes.write_text(json.dumps({"P103": ["french", "english"], "P131": ["paris", "rome"]}))
    model = str(tiny_dirs["llama_gqa_untied"])
    args = [
        "lens",
        model,
        "--dataset",
        str(data),
        "--attributes",
        str(attributes),
        "--k",
        "5",
        "--window",
        "1",
    ]
    assert cli.main([*args, "--out", str(tmp_path / "lens")]) == 0
    out = capsys.readouterr().out
    assert "1 facts skipped" in out and "2 facts: attribute rate peaks at layer" in out
    result = json.loads((tmp_path / "lens" / "relation_lens.json").read_text())
    assert len(result["attribute_rate"]) == 3 and len(result["blocking"]["drop"]["mlp"]) == 3
    assert (tmp_path / "lens" / "relation_lens.png").stat().st_size > 0
    assert (
        cli.main(
            ["lens", model, "--analysis", "probes", "--dataset", str(data), "--out", str(tmp_path / "p")]
        )
        == 0
    )
    assert len(json.loads((tmp_path / "p" / "probes.json").read_text())["mlp_cosine"]) == 3
