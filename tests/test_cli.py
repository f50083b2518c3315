"""The `jaxedit` command on tiny models: info output and clear errors."""

from __future__ import annotations

from jaxedit import cli


def test_info_prints_family_and_parameter_count(tiny_dirs, capsys) -> None:
    assert cli.main(["info", str(tiny_dirs["neox_sequential"])]) == 0
    out = capsys.readouterr().out
    assert "gpt_neox" in out and "sequential" in out and "rotary (half, 4 dims)" in out


def test_generate_without_tokenizer_is_a_clear_error(tiny_dirs, capsys) -> None:
    assert cli.main(["generate", str(tiny_dirs["gpt2"]), "hello"]) == 2
    assert "has no tokenizer" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(capsys) -> None:
    assert cli.main(["info", "/no/such/dir"]) == 2
    assert "neither an embedded model" in capsys.readouterr().err
