"""`Report`: an evaluation summary that stays a plain dict (JSON, indexing) and renders as a table in a
notebook."""

from __future__ import annotations

from typing import Any

from jaxedit.display import html_table

# the columns a report shows, in order, when its rows have them (CounterFact, RETS, zsRE, withdrawal,
# entity vs relation probes)
COLUMNS = (
    "ES", "PS", "NS", "RS_spec", "score", "score_rets", "fluency", "RS", "Con",
    "entity_reliability", "entity_generality", "relation_reliability", "relation_generality", "n",
)  # fmt: skip


class Report(dict):
    """`{"unedited": {...}, method: {...}, "protocol": ..., ...}` as `evaluate_*` return it: rows are
    the values that are dicts of metrics; everything else is run information."""

    def rows(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.items() if isinstance(v, dict) and k not in ("protocol", "settings")}

    def _repr_html_(self) -> str:
        rows = self.rows()
        columns = [c for c in COLUMNS if any(row.get(c) is not None for row in rows.values())]
        extra = ", ".join(f"{k} {self[k]}" for k in ("batch", "seconds") if k in self)
        return html_table(
            f"evaluation ({extra})" if extra else "evaluation",
            ("method", *columns),
            ((name, *(row.get(c) for c in columns)) for name, row in rows.items()),
        )
