"""Rich notebook displays: a trace result (PNG), a delta and a journal (HTML), an evaluation report (HTML)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np

import jaxedit
from jaxedit.edit import Delta, EditJournal
from jaxedit.evaluate.report import Report
from jaxedit.trace import trace


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
    result = trace(model, "the eiffel tower is located in", subject="the eiffel tower", samples=2,
                   noise=0.5, window=2, kinds=("mlp",))  # fmt: skip
    png = result._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_delta_and_journal_render_as_html_tables(tiny_dirs) -> None:
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
