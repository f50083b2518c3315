"""The `jaxedit` command on tiny models: info output and clear errors."""

from __future__ import annotations

import shutil

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
