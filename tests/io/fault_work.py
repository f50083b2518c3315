"""Three resumable workloads on a tiny model, shared by `test_faults.py` and its killed subprocesses.

`python tests/io/fault_work.py KIND MODEL_DIR PLACE` runs workload KIND (`stats`, `targets` or `eval`) with
its persistent state under PLACE, each unit of work slowed by a sleep so that a test can kill the
process between or inside units; in the test process the same functions run without the sleep.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import jaxedit
from jaxedit.edit import stats as stats_lib
from jaxedit.edit import target_store
from jaxedit.edit.delta import Delta
from jaxedit.edit.memit import MemitHparams
from jaxedit.edit.requests import Request
from jaxedit.edit.targets import TargetHparams
from jaxedit.evaluate import evaluate_counterfact, read_counterfact
from jaxedit.runtime.execution import Execution

TEXTS = [f"text {i} on the eiffel tower w{i % 50} and rome w{(3 * i) % 50}" for i in range(40)]
TEMPLATES = ["{}", "the city of rome . {}"]
SUBJECTS = ["danielle darrieux", "the eiffel tower", "paris", "rome", "the louvre", "w40 w41"]
REQUESTS = [Request(prompt="the mother tongue of {} is", subject=s, target="english") for s in SUBJECTS]
HP = MemitHparams(layers=(0, 1), targets=TargetHparams(steps=3, reference="resid_post"))


def statistics(model, place: Path) -> np.ndarray:
    """40 batches of one text, each checkpointed."""
    import os

    os.environ["JAXEDIT_CACHE"] = str(place)
    stats = stats_lib.key_statistics(
        model, [1], TEXTS, max_len=8, batch_tokens=8, checkpoint_every=1, progress=False
    )
    return stats[1].matrix


def targets(model, place: Path) -> np.ndarray:
    """Six requests in groups of one."""
    return target_store.stored_targets(model, REQUESTS, HP, TEMPLATES, place, group=1, progress=False).delta


def evaluation(model, place: Path) -> dict:
    """Six CounterFact cases, each edited alone and written when scored."""
    records = [
        {"case_id": i, "requested_rewrite": {"prompt": r.prompt, "subject": r.subject, "target_new": {"str": "english"},
         "target_true": {"str": "french"}}, "paraphrase_prompts": [f"the language of {r.subject} is"],
         "neighborhood_prompts": ["the language of w60 is"]}
        for i, r in enumerate(REQUESTS)
    ]  # fmt: skip
    data = place / "data.json"
    if not data.exists():
        place.mkdir(parents=True, exist_ok=True)
        data.write_text(json.dumps(records))
    c = model.config

    def edit(m, request):
        scale = (SUBJECTS.index(request.subject) + 1) * 1e-2
        return Delta(
            layers=(1,), left=np.full((1, 1, c.d_mlp), scale), right=np.ones((1, 1, c.d_model)), method="t"
        )

    summary = evaluate_counterfact(
        model, read_counterfact(data), edit, method="t", out_dir=place / "out", generation_tokens=0,
        execution=Execution(score_cases=1, progress=False),
    )  # fmt: skip
    return {k: summary[k] for k in ("unedited", "t")}


WORK = {"stats": statistics, "targets": targets, "eval": evaluation}


def slowed(kind: str) -> None:
    """Make each unit of `kind` take at least 0.15 s (in the killed subprocess only)."""

    def slow(fn):
        def wrapper(*args, **kwargs):
            time.sleep(0.15)
            return fn(*args, **kwargs)

        return wrapper

    if kind == "stats":
        stats_lib._accumulate = slow(stats_lib._accumulate)
    elif kind == "targets":
        target_store.memit_targets = slow(target_store.memit_targets)
    else:
        from jaxedit.evaluate import counterfact

        counterfact.score_cases = slow(counterfact.score_cases)


if __name__ == "__main__":
    kind, model_dir, place = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    model = jaxedit.load_model(model_dir)
    slowed(kind)
    print("started", flush=True)
    WORK[kind](model, place)
