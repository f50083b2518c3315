"""Evaluation of edits: CounterFact metrics (docs/methods.md §12)."""

from jaxedit.evaluate.counterfact import CounterfactCase, evaluate_counterfact, read_counterfact, score_case

__all__ = ["CounterfactCase", "evaluate_counterfact", "read_counterfact", "score_case"]
