"""The real embedded model: SmolLM2-135M-Instruct from its GGUF, against `transformers` on the same file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from conftest import requires_smollm2

import jaxedit
from jaxedit import cli
from jaxedit.io.loading import embedded_gguf_path

pytestmark = [requires_smollm2, pytest.mark.slow]

PROMPTS = ["The Eiffel Tower is located in the city of", "The capital of France is", "Water boils at"]


@pytest.fixture(scope="module")
def hf_smollm2():
    path = embedded_gguf_path()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


def test_config_is_smollm2(smollm2) -> None:
    c = smollm2.config
    assert (c.family, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.vocab_size) == (
        "llama",
        30,
        576,
        9,
        3,
        49152,
    )
    assert c.tie_embeddings and jaxedit.core.layout.param_count(c) == 134_515_008


def test_logits_match_transformers_on_the_same_gguf(smollm2, hf_smollm2) -> None:
    ids, mask = jaxedit.core.tokens.encode(smollm2.tokenizer, PROMPTS, side="left")
    ours = np.asarray(jaxedit.forward(smollm2.params, smollm2.config, ids, mask).logits)
    for i, prompt in enumerate(PROMPTS):
        single = smollm2.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = hf_smollm2(single).logits[0].numpy()
        got = ours[i, -ref.shape[0] :]
        assert np.abs(got - ref).max() <= 1e-3, (prompt, np.abs(got - ref).max())


def test_greedy_completions_say_paris(smollm2) -> None:
    completions = jaxedit.generate_text(smollm2, PROMPTS[:2], max_new_tokens=5)
    assert all(text.startswith(" Paris") for text in completions), completions


def test_next_tokens_top1_is_paris(smollm2) -> None:
    (row,) = jaxedit.next_tokens(smollm2, [PROMPTS[0]], k=5)
    assert (
        row.tokens[0] == " Paris"
        and 0 < row.probs[0] <= 1
        and list(row.probs) == sorted(row.probs, reverse=True)
    )


def test_saved_model_reloads_in_transformers(smollm2, tmp_path) -> None:
    out = jaxedit.save_hf(smollm2, tmp_path / "smollm2-hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = reloaded(ids).logits.numpy()
    ours = np.asarray(jaxedit.forward(smollm2.params, smollm2.config, ids.numpy()).logits)
    assert np.abs(ours - ref).max() <= 1e-3


def test_cli_generate_and_info(capsys) -> None:
    assert cli.main(["generate", "smollm2", "The capital of France is", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("The capital of France is Paris")
    assert cli.main(["info", "smollm2"]) == 0
    out = capsys.readouterr().out
    assert "llama" in out and "134,515,008" in out


def test_cli_trace_eiffel_tower_writes_three_grids_and_heatmaps(tmp_path, capsys) -> None:
    args = [
        "trace",
        "smollm2",
        "--prompt",
        PROMPTS[0],
        "--subject",
        "The Eiffel Tower",
        "--samples",
        "2",
        "--segments",
        "4",
    ]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "trace.json").read_text())
    assert saved["answer"] == " Paris" and saved["subject_span"] == [0, 4]
    assert {k: np.asarray(v).shape for k, v in saved["grids"].items()} == {
        k: (30, 10) for k in ("hidden", "mlp", "attn")
    }
    hidden = np.asarray(saved["grids"]["hidden"])
    assert hidden[-1, -1] == pytest.approx(saved["p_clean"], abs=1e-5)  # last state restored: clean
    assert saved["p_clean"] > 0.5 > 0.2 > saved["p_corrupt"]
    assert (tmp_path / "trace.png").stat().st_size > 10_000
    assert "strongest restoration" in capsys.readouterr().out
