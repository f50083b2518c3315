"""HTML tables for notebook displays (`_repr_html_` of deltas, journals and evaluation reports)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence


def html_table(caption: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain `<table>` with every cell escaped (floats to 4 significant digits, None as a dash)."""

    def cell(value: object) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.4g}"
        return html.escape(str(value))

    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><caption>{html.escape(caption)}</caption>{head}{body}</table>"


def request_text(request: dict) -> str:
    """`"<prompt with subject> → <target>"` of an edit request dict."""
    return f"{request.get('prompt', '').format(request.get('subject', ''))} → {request.get('target', '')}"
