"""A cheap look at an edited model, to catch an edit that broke it (a loss that looks fine can hide
overflow, a wrong dtype or a solve against poor statistics).

`check_edit(base, edited, requests)` runs one batched forward of both models on up to four edit prompts
and three unrelated prompts and reports: whether the edited model's next-token logits are finite,
whether the first token of each new target became more likely, and how many unrelated prompts keep
their top prediction. Problems are logged as a warning and returned; nothing is changed or refused.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import jax
import numpy as np

from jaxedit.core import tokens as tok
from jaxedit.core.decoder import forward
from jaxedit.edit.requests import Request, as_request
from jaxedit.edit.targets import target_ids
from jaxedit.io.loading import Model

log = logging.getLogger(__name__)

UNRELATED = (
    "The sun rises in the",
    "Two plus two equals",
    "The opposite of hot is",
)


@dataclasses.dataclass(frozen=True)
class EditCheck:
    """What `check_edit` saw.

    Attributes:
      finite: every next-token logit of the edited model is finite.
      target_gain: per checked request, log p(first target token) after minus before.
      unrelated_kept: unrelated prompts whose top next token is the same before and after.
      unrelated: how many unrelated prompts were checked.
      problems: one sentence per problem found (empty: the edit looks healthy).
    """

    finite: bool
    target_gain: tuple[float, ...]
    unrelated_kept: int
    unrelated: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _last_logprobs(model: Model, prompts: Sequence[str]) -> np.ndarray:
    ids, mask = tok.encode(model.tokenizer, list(prompts))
    logits = forward(model.params, model.config, ids, mask).logits[:, -1]
    return np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1))


def check_edit(
    base: Model,
    edited: Model,
    requests: Sequence[Request | dict],
    *,
    max_requests: int = 4,
    warn: bool = True,
) -> EditCheck:
    """Compare `edited` with `base` on the first `max_requests` edit prompts and on `UNRELATED`.

    A problem is: non-finite logits; a target whose first token did not become more likely; or every
    unrelated prompt changing its top prediction (a single edit should leave unrelated text alone).
    """
    checked = [as_request(r) for r in list(requests)[:max_requests]]
    prompts = [r.text for r in checked] + list(UNRELATED)
    before, after = _last_logprobs(base, prompts), _last_logprobs(edited, prompts)
    finite = bool(np.isfinite(after).all())
    firsts = [target_ids(base, r.target)[0] for r in checked]
    gains = tuple(float(after[i, t] - before[i, t]) for i, t in enumerate(firsts))
    n = len(checked)
    kept = int(sum(before[n + j].argmax() == after[n + j].argmax() for j in range(len(UNRELATED))))
    problems = []
    if not finite:
        problems.append("the edited model's logits are not finite")
    fell = [r.target for r, g in zip(checked, gains, strict=True) if not g > 0]
    if fell:
        problems.append(
            f"the new target did not become more likely for {len(fell)} of {n} edits ({fell[:3]})"
        )
    if kept == 0:
        problems.append(f"every one of {len(UNRELATED)} unrelated prompts changed its top prediction")
    result = EditCheck(finite, gains, kept, len(UNRELATED), tuple(problems))
    if warn and problems:
        log.warning("jaxedit: the edit may have damaged the model: %s", "; ".join(problems))
    return result
