"""Rich notebook displays: a trace result (PNG), a delta and a journal (HTML), an evaluation report (HTML);
models, deltas, journals and traces through treescope when it is installed (issue 37, item 6)."""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import jaxedit
from jaxedit.edit import Delta, EditJournal
from jaxedit.evaluate.report import Report
from jaxedit.trace import Noise, trace
from jaxedit.trace.api import TraceResult


class _Cells(HTMLParser):
    """Collects the text of every `<td>` / `<th>` and checks that tags nest properly."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.cells: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.open.append(tag)
        if tag in ("td", "th"):
            self.cells.append("")

    def handle_endtag(self, tag) -> None:
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing"

    def handle_data(self, data) -> None:
        if self.open and self.open[-1] in ("td", "th"):
            self.cells[-1] += data


def cells(markup: str) -> list[str]:
    parser = _Cells()
    parser.feed(markup)
    assert not parser.open and markup.startswith("<table>")
    return parser.cells


def test_trace_result_renders_as_png(tiny_dirs) -> None:
    model = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    result = trace(model, "the eiffel tower is located in", subject="the eiffel tower",
                   noise=Noise(0.5, samples=2), window=2, kinds=("mlp",))  # fmt: skip
    png = result._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_delta_and_journal_render_as_html_tables(tiny_dirs, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "treescope", None)  # the tables of a notebook without treescope
    model = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    f, d = model.config.d_mlp, model.config.d_model
    request = {"prompt": "the capital of {} is", "subject": "france <b>", "target": "rome"}
    delta = Delta(layers=(0, 2), left=np.ones((2, 1, f)), right=np.ones((2, 1, d)), method="rome",
                  requests=(request,))  # fmt: skip
    got = cells(delta._repr_html_())
    assert got[:4] == ["site", "layer", "‖ΔW‖", "rank"]
    assert got[4:6] == ["mlp", "0"] and float(got[6]) == float(f"{np.sqrt(f * d):.4g}")
    assert "capital of france <b> is → rome" in delta._repr_html_().replace("&lt;", "<").replace("&gt;", ">")
    journal = EditJournal(model)
    journal.apply(delta)
    row = cells(journal._repr_html_())[5:]
    assert row[0] == delta.id and row[1] == "rome" and row[2] == "0,2"


def test_report_renders_rows_and_stays_a_dict() -> None:
    report = Report(unedited={"ES": 10.0, "PS": 5.5, "n": 2}, rome={"ES": 100.0, "PS": 90.0, "n": 2},
                    protocol={"ES": "..."}, batch=1)  # fmt: skip
    assert json.loads(json.dumps(report))["rome"]["ES"] == 100.0
    assert cells(report._repr_html_()) == ["method", "ES", "PS", "n", "unedited", "10", "5.5", "2",
                                           "rome", "100", "90", "2"]  # fmt: skip


def _display_objects(tiny_dirs):
    """A model, a delta, the journal holding it and a (synthetic) trace result."""
    model = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    f, d = model.config.d_mlp, model.config.d_model
    request = {"prompt": "the capital of {} is", "subject": "france", "target": "rome"}
    delta = Delta(layers=(0, 2), left=np.ones((2, 1, f)), right=np.ones((2, 1, d)), method="rome",
                  requests=(request,))  # fmt: skip
    journal = EditJournal(model)
    journal.apply(delta)
    result = TraceResult(prompt="the eiffel tower is in", tokens=["the", "eiffel", "tower", "is", "in"],
                         token_ids=[1, 2, 3, 4, 6], subject_span=(0, 3), corrupted=[True] * 3 + [False] * 2,
                         corruption="subject", answer="paris", answer_id=9, p_clean=0.75, p_corrupt=0.125,
                         grids={"mlp": np.linspace(0, 1, 15).reshape(3, 5)}, samples=2, noise_scale=0.5,
                         window=2, window_convention="code", sever=None, seed=0)  # fmt: skip
    return model, delta, journal, result


def test_treescope_renders_the_fields_of_models_deltas_journals_and_traces(tiny_dirs) -> None:
    treescope = pytest.importorskip("treescope")
    model, delta, journal, result = _display_objects(tiny_dirs)
    text = treescope.render_to_text(model)
    assert text.startswith("Model(") and "family='llama'" in text and "layers=3" in text
    assert "width=64" in text and "mlp_width=96" in text and f"fingerprint='{model.fingerprint}'" in text
    assert "params={'embed': {'tokens': <jax.Array float32(97, 64)" in text  # the params as a tree
    text = treescope.render_to_text(delta)
    assert f"id='{delta.id}'" in text and "method='rome'" in text and "layers=(0, 2)" in text
    assert "rank=1" in text and f"norms={{0: {delta.norms()[0]}" in text and "'target': 'rome'" in text
    text = treescope.render_to_text(journal)
    assert "edits=1" in text and f"base_fingerprint='{model.fingerprint}'" in text
    assert (
        f"fingerprint='{journal.model.fingerprint}'" in text
        and f"{{'id': '{delta.id}', 'method': 'rome'" in text
    )
    text = treescope.render_to_text(result)
    assert "kinds=('mlp',)" in text and "shape=(3, 5)" in text and "p_clean=0.75" in text
    assert "scores={'mlp': <np.ndarray float64(3, 5) ≈0.5" in text and "≤1.0]" in text
    for value in (model, delta, journal, result):  # the notebook display is treescope's
        assert "treescope-container" in value._repr_html_()
    page = treescope.render_to_html(delta, compressed=False)
    assert (
        page.count("customElements.get('treescope-container')") == 1
    )  # the table embedded, not the tree again
    assert "&lt;table&gt;" in page or "<table>" in page
    assert "data:image/png;base64," in treescope.render_to_html(result, compressed=False)  # the heatmaps


def test_without_treescope_the_html_tables_are_shown(tiny_dirs, monkeypatch) -> None:
    model, delta, journal, result = _display_objects(tiny_dirs)
    monkeypatch.setitem(sys.modules, "treescope", None)  # `import treescope` raises ImportError
    assert cells(delta._repr_html_())[4:6] == ["mlp", "0"]
    assert cells(journal._repr_html_())[5:7] == [delta.id, "rome"]
    assert cells(model._repr_html_())[9:12] == ["llama", "3", "64"]
    assert result._repr_html_() is None  # the notebook falls back to the PNG heatmaps
