"""Bad input is refused at the boundary with one line; bugs show a traceback (issue 34, finding 5)."""

from __future__ import annotations

import json

import pytest

from jaxedit import cli
from jaxedit.core.config import ConfigError
from jaxedit.edit.memit import default_hparams as memit_hparams
from jaxedit.edit.rome import default_hparams as rome_hparams
from jaxedit.errors import InputError
from jaxedit.io.families import rope_settings


@pytest.fixture(scope="module")
def model(tiny_dirs):
    import jaxedit

    return jaxedit.load_model(tiny_dirs["llama_gqa_untied"])


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"lr": "NaN"}, "lr must be a finite number"),
        ({"lr": -0.5}, "lr must be above 0"),
        ({"clamp": -1.0}, "clamp must be above 0"),
        ({"steps": 2.5}, "steps must be int"),
        ({"steps": True}, "steps must be int"),
        ({"kl_prompt": "{city} is a"}, "no other placeholder"),
        ({"stepz": 3}, "unknown TargetHparams fields"),
    ],
)
def test_bad_hyperparameter_files_are_refused(model, tmp_path, targets: dict, match: str) -> None:
    values = {k: float("nan") if v == "NaN" else v for k, v in targets.items()}
    path = tmp_path / "hp.json"
    path.write_text(json.dumps({"layer": 1, "targets": values}).replace("NaN", "NaN"))
    with pytest.raises(InputError, match=match):
        rome_hparams(model, path)
    mass = tmp_path / "mass.json"
    mass.write_text(json.dumps({"layers": [0, 1], "targets": values}))
    with pytest.raises(InputError, match=match):
        memit_hparams(model, "memit", mass)


def test_bad_top_level_settings_are_refused(model, tmp_path) -> None:
    path = tmp_path / "hp.json"
    for settings, match in (
        ({"layers": [], "mom2_weight": 1.0}, "non-empty"),
        ({"spread": "odd"}, "spread must be one of"),
    ):
        path.write_text(json.dumps(settings))
        with pytest.raises(InputError, match=match):
            memit_hparams(model, "memit", path)


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "M", "--dataset", "d", "--out", "o", "--n", "-1"],
        ["eval", "M", "--dataset", "d", "--out", "o", "--batch", "0"],
        ["stats", "M", "--layers", "0", "--samples", "0"],
        ["edit", "M", "--prompt", "{}", "--subject", "s", "--target", "t", "--stats-samples", "x"],
        ["trace", "M", "--prompt", "p", "--subject", "s", "--out", "o", "--samples", "0"],
        ["trace", "M", "--dataset", "d", "--out", "o", "--max-minutes", "nan"],
    ],
)
def test_cli_numbers_are_checked_before_anything_runs(argv, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_a_prompt_with_another_placeholder_is_one_line(tiny_dirs, capsys) -> None:
    args = ["edit", str(tiny_dirs["llama_gqa_untied"]), "--method", "ft", "--prompt", "{} is in {city}",
            "--subject", "x", "--target", "y"]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxedit: error: edit prompt must hold exactly one '{}'") and "\n" not in err


def test_user_errors_are_one_line_and_bugs_show_a_traceback(monkeypatch, capsys) -> None:
    def user_error(args):
        raise InputError("the input is wrong")

    def bug(args):
        return {}["missing"]

    for func, code in ((user_error, 2), (bug, 1)):
        monkeypatch.setattr(cli, "cmd_info", func)
        assert cli.main(["--compile-cache", "off", "info", "x"]) == code
        err = capsys.readouterr().err
        if code == 2:
            assert err == "jaxedit: error: the input is wrong\n"
        else:
            assert "Traceback" in err and "KeyError: 'missing'" in err and "this is a bug in jaxedit" in err


def test_rope_scalings_transformers_would_apply_are_never_dropped() -> None:
    yarn = {
        "rope_scaling": {"type": "yarn", "factor": 4.0},
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
    }
    with pytest.raises(ConfigError, match="unsupported rope scaling 'yarn'"):
        rope_settings(yarn, 1e4)
    two = {
        "rope_scaling": {"type": "linear", "factor": 2.0},
        "rope_parameters": {"rope_type": "llama3", "factor": 8.0},
    }
    with pytest.raises(ConfigError, match="two rope scalings"):
        rope_settings(two, 1e4)
    theta, scaling = rope_settings(
        {"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 500.0}, 1e4
    )
    assert theta == 500.0 and dict(scaling) == {"rope_type": "linear", "factor": 2.0}  # the kind is kept


def test_a_legacy_linear_scaling_changes_the_logits_as_in_transformers(tmp_path) -> None:
    import numpy as np
    import torch
    import transformers
    from hf_tiny import TINY_CONFIGS

    import jaxedit

    config = transformers.AutoConfig.for_model(**TINY_CONFIGS["llama_gqa_untied"])
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    fields = json.loads(path.read_text())  # as older transformers wrote it: rope_scaling, rope_theta
    fields.pop("rope_parameters", None)
    fields.update(rope_scaling={"type": "linear", "factor": 4.0}, rope_theta=10000.0)
    path.write_text(json.dumps(fields))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    ids = np.arange(1, 40)[None]
    with torch.no_grad():
        want = hf(torch.as_tensor(ids)).logits.numpy()
    model = jaxedit.load_model(tmp_path / "m")
    got = np.asarray(jaxedit.forward(model.params, model.config, ids).logits)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert dict(model.config.rope_scaling)["rope_type"] == "linear"
