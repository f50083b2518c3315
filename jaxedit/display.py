"""Notebook displays: treescope renderings of models, deltas, journals and traces when `treescope` is
installed (the `notebook` extra), HTML tables otherwise (and for evaluation reports).

`Model`, `Delta`, `EditJournal` and `TraceResult` are `Rendered`: they implement treescope's
`__treescope_repr__` protocol with `treescope_fields` (their fields as a foldable tree:
`treescope.render_to_text(x)`, `treescope.show(x)`), and their `_repr_html_` is `notebook_html`:
treescope's HTML when it can be imported, else the HTML of before (a table; a trace: none, so that its
PNG heatmaps show). Inside a treescope rendering an object's own HTML (the table, a trace's heatmaps) is
embedded under its tree.
"""

from __future__ import annotations

import contextvars
import html
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

_IN_TREESCOPE: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxedit_in_treescope", default=False)


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


def _embedding_for_treescope() -> bool:
    """Whether the `_repr_html_` that called `notebook_html` was called by treescope to embed the
    object's own HTML in a rendering of it (treescope's `to_html`), rather than to display it."""
    try:
        frame = sys._getframe(3)  # <- notebook_html <- _repr_html_ <- its caller
    except ValueError:  # called from the top of a stack
        return False
    return frame.f_code.co_name == "to_html" and str(frame.f_globals.get("__name__", "")).startswith(
        "treescope"
    )


def notebook_html(
    obj: object, fallback: Callable[[], str | None], embedded: Callable[[], str | None] | None = None
) -> str | None:
    """The notebook HTML of `obj` (its `_repr_html_`): treescope's rendering when treescope can be
    imported, else `fallback()`. Within a treescope rendering of `obj` (treescope embeds the HTML of
    objects that have one), `embedded()` (default: `fallback()`), so that a rendering never recurses."""
    if _IN_TREESCOPE.get() or _embedding_for_treescope():
        return (embedded or fallback)()
    try:
        import treescope
    except ImportError:
        return fallback()
    token = _IN_TREESCOPE.set(True)
    try:
        return treescope.render_to_html(obj, ignore_exceptions=True)
    finally:
        _IN_TREESCOPE.reset(token)


def treescope_fields(
    obj: object,
    fields: Sequence[tuple[str, str | None, Any]],
    path: str | None,
    subtree_renderer: Callable[..., Any],
) -> Any:
    """A treescope rendering `Type(label=value, ...)` of `obj` (for `__treescope_repr__`), like
    `treescope.repr_lib.render_object_constructor` but for fields that are not attributes.

    Args:
      fields: `(label, accessor, value)`: the accessor is the Python suffix that reaches the value from
        the object (`.params`, `.config.n_layers`, `.entries()`), which treescope shows as the value's
        path, or None for a derived value.
      path, subtree_renderer: the arguments of `__treescope_repr__`.
    """
    from treescope import rendering_parts as parts

    children = []
    for i, (label, accessor, value) in enumerate(fields):
        last = i == len(fields) - 1
        comma = (
            parts.fold_condition(expanded=parts.text(","))
            if last
            else parts.siblings(",", parts.fold_condition(collapsed=parts.text(" ")))
        )
        child_path = None if path is None or accessor is None else path + accessor
        line = parts.siblings_with_annotations(f"{label}=", subtree_renderer(value, path=child_path))
        children.append(parts.build_full_line_with_annotations(line, comma))
    return parts.build_foldable_tree_node_from_children(
        prefix=parts.siblings(
            parts.roundtrip_condition(roundtrip=parts.text("<")),
            parts.maybe_qualified_type_name(type(obj)),
            "(",
        ),
        children=children,
        suffix=parts.siblings(")", parts.roundtrip_condition(roundtrip=parts.text(">"))),
        path=path,
    )


class Rendered:
    """Notebook displays (`_repr_html_`, `__treescope_repr__`) from what a class defines:
    `_display_fields()`, its `(label, accessor, value)` fields for `treescope_fields`; `_html_table()`,
    its HTML without treescope (None: none); `_embedded_html()`, its HTML inside a treescope rendering
    (default: `_html_table()`)."""

    def _display_fields(self) -> Sequence[tuple[str, str | None, Any]]:
        raise NotImplementedError

    def _html_table(self) -> str | None:
        return None

    def _embedded_html(self) -> str | None:
        return self._html_table()

    def _repr_html_(self) -> str | None:
        """Treescope's rendering when it is installed, else `_html_table()`."""
        return notebook_html(self, self._html_table, self._embedded_html)

    def __treescope_repr__(self, path: str | None, subtree_renderer: Callable[..., Any]) -> Any:
        """Treescope's rendering (`treescope.render_to_text(obj)`) of `_display_fields()`."""
        return treescope_fields(self, self._display_fields(), path, subtree_renderer)
