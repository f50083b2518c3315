"""A results folder belongs to one run: another method, model, setting or case never reuses its
results (issue 34, finding 2)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from records import EASYEDIT_RECORD, ROME_RECORD

import jaxedit
from jaxedit import cli
from jaxedit.edit import Delta
from jaxedit.errors import InputError
from jaxedit.evaluate import evaluate_counterfact, read_counterfact
from jaxedit.runtime.execution import Execution

QUIET = Execution(progress=False)


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return jaxedit.load_model(tiny_dirs["llama_gqa_untied"])


@pytest.fixture
def cases(tmp_path):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([ROME_RECORD, EASYEDIT_RECORD]))
    return read_counterfact(path)


def _edit(scale: float):
    def edit(m, request):
        c = m.config
        return Delta(
            layers=(1,), left=np.full((1, 1, c.d_mlp), scale), right=np.ones((1, 1, c.d_model)), method="t"
        )

    return edit


def _run(model, cases, out, method="a", scale=0.01, **kwargs):
    return evaluate_counterfact(
        model, cases, _edit(scale), method=method, out_dir=out, generation_tokens=0, execution=QUIET, **kwargs
    )


def test_another_method_model_or_setting_is_refused(model, cases, tmp_path) -> None:
    out = tmp_path / "run"
    first = _run(model, cases, out, settings={"lr": 0.5})
    assert (
        first["run"]["method"] == "a" and first["run"]["settings"] == {"lr": 0.5} and first["run"]["n"] == 2
    )
    other_model = model.replace(params=jax.tree.map(lambda a: a * 2, model.params))
    for changed, match in (
        (dict(method="b", settings={"lr": 0.5}), "method"),
        (dict(settings={"lr": 0.1}), "settings"),
        (dict(settings={"lr": 0.5}, batch=2), "batch"),
    ):
        with pytest.raises(InputError, match=f"another run \\({match}"):
            _run(model, cases, out, **changed)
    with pytest.raises(InputError, match="another run \\(fingerprint"):
        _run(other_model, cases, out, settings={"lr": 0.5})
    assert _run(model, cases, out, scale=5.0, settings={"lr": 0.5})["a"] == first["a"]  # resumed, not redone


def test_an_unknown_option_is_refused_before_any_work(model, cases, tmp_path) -> None:
    with pytest.raises(TypeError, match=r"unknown evaluation options \['progress'\]"):
        evaluate_counterfact(model, cases, None, method="a", out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_folder_of_unknown_results_is_refused(model, cases, tmp_path) -> None:
    (tmp_path / "old" / "cases").mkdir(parents=True)
    (tmp_path / "old" / "cases" / "7.json").write_text("{}")
    with pytest.raises(InputError, match="no record of the run"):
        _run(model, cases, tmp_path / "old")


def test_a_changed_case_or_group_is_scored_again(model, cases, tmp_path) -> None:
    out = tmp_path / "run"
    _run(model, cases, out)
    record = dict(EASYEDIT_RECORD, target_new="london")  # same case_id 8, another edit
    changed = read_counterfact(_write(tmp_path / "changed.json", [ROME_RECORD, record]))
    calls = []

    def counting(m, request):
        calls.append(request.target)
        return _edit(0.01)(m, request)

    evaluate_counterfact(
        model, changed, counting, method="a", out_dir=out, generation_tokens=0, execution=QUIET
    )
    assert calls == ["london"]
    grouped = tmp_path / "grouped"
    evaluate_counterfact(model, cases, lambda m, rs: _edit(0.01)(m, rs[0]), method="a", batch=2, out_dir=grouped,
                         generation_tokens=0, execution=QUIET)  # fmt: skip
    alone = [cases[0]]  # case 7 was edited with case 8: its saved row is not this group's
    calls.clear()
    evaluate_counterfact(model, alone, lambda m, rs: calls.append(len(rs)) or _edit(0.01)(m, rs[0]), method="a",
                         batch=2, out_dir=grouped, generation_tokens=0, execution=QUIET)  # fmt: skip
    assert calls == [1]


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


def test_cli_eval_of_another_method_in_the_same_folder_fails(tiny_dirs, tmp_path, capsys) -> None:
    data = _write(tmp_path / "cf.json", [ROME_RECORD, EASYEDIT_RECORD])
    common = ["eval", str(tiny_dirs["llama_gqa_untied"]), "--dataset", str(data), "--out", str(tmp_path / "out"),
              "--generation-tokens", "0"]  # fmt: skip
    assert cli.main([*common, "--method", "none"]) == 0
    capsys.readouterr()
    assert cli.main([*common, "--method", "ft-l", "--layer", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds the results of another run (method: 'CounterFact (none)' there" in err
