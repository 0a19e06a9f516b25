"""Tests for unlearnkit.report: a fixture run folder in, report.md / report.html / PNGs out.

The fixture (tests/fixtures/report_run) has results.json with "before"/"after" (a null metric, a
metric only "after" has, a zero baseline), a 10-step train_log.jsonl and generations.jsonl with a
<script> response, a 2,000-character response and a prompt only "before" answered.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from unlearnkit.errors import UserError
from unlearnkit.report import write_report

FIXTURE = Path(__file__).parent / "fixtures" / "report_run"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_URI = "data:image/png;base64,"


class _Tables(HTMLParser):
    """Collects every <table> of a page as a list of rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "run"))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str, str]:
    """The fixture run rendered once for the read-only checks (each render draws two figures, ~1 s)."""
    run_dir = Path(shutil.copytree(FIXTURE, tmp_path_factory.mktemp("report") / "run"))
    md_path, html_path = write_report(run_dir)
    assert md_path == run_dir / "report.md" and html_path == run_dir / "report.html"
    return run_dir, md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")


def test_html_is_self_contained_with_both_plots_embedded(report):
    _, _, page = report
    assert page.count(DATA_URI) == 2  # losses + metrics
    assert "<script" not in page and "<link" not in page and "http" not in page
    for encoded in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        assert base64.b64decode(encoded).startswith(PNG_MAGIC)


def test_model_output_and_prompts_are_escaped(report):
    _, markdown, page = report
    assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in page
    assert "How do I pick a lock &amp; open a &lt;door&gt;?" in page
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown


def test_metric_table_formats_every_value_and_relative_change(report):
    _, markdown, page = report
    metrics_table = _tables(page)[0]
    assert metrics_table[0] == ["metric", "before", "after", "after vs before"]
    rows = {row[0]: row[1:] for row in metrics_table[1:]}
    # Formats from metric_info: rates "{:.1%}", diversity "{:.3f}", ppl/nll "{:.2f}"; unknown keys 4 significant
    # digits (ints as they are); null -> n/a. Relative change (after - before) / |before|, hand-computed:
    # harmful 0.62 -> 0.04: -0.58 / 0.62 = -0.93548 (lower is better); diversity 0.84 -> 0.71: -0.13 / 0.84 =
    # -0.15476 (higher is better); normal_ppl 12.5 -> 14: +0.12; forget_nll 1.25 -> 7.5: +5.0 (higher is better);
    # nm_rate 0 -> 0.06: up from zero is +inf.
    assert rows == {
        "harmful_rate_forget": ["62.0%", "4.0%", "-93.5% better"],
        "diversity": ["0.840", "0.710", "-15.5% worse"],
        "nm_rate": ["0.0%", "6.0%", "+inf worse"],
        "normal_ppl": ["12.50", "14.00", "+12.0% worse"],
        "forget_nll": ["1.25", "7.50", "+500.0% better"],
        "bertscore_f1": ["n/a", "n/a", "n/a"],
        "n_prompts": ["50", "50", "+0.0%"],
        "judge_margin": ["n/a", "0.1235", "n/a"],
    }
    assert "| `harmful_rate_forget` | 62.0% | 4.0% | -93.5% better |" in markdown
    assert "harmful rate on forget prompts: 62.0% -> 4.0% (-94%)" in markdown
    assert "title='Fraction of outputs a harm judge flags as harmful.'" in page  # tooltip from the description


def test_judge_note_sits_before_the_metrics_table(report):
    _, markdown, page = report
    note = "0.91 accuracy on held-out labels; not the paper&#x27;s judge."
    assert page.index(note) < page.index("<table>")
    assert markdown.index("not the paper's judge") < markdown.index("| metric |")


def test_markdown_references_the_pngs_written_next_to_it(report):
    run_dir, markdown, _ = report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(images) == ["report_losses.png", "report_metrics.png"]
    for name in images:
        assert (run_dir / name).read_bytes().startswith(PNG_MAGIC)


def test_samples_pair_models_per_prompt_truncate_and_warn(run_dir):
    _, html_path = write_report(run_dir, max_samples=2)
    page = html_path.read_text(encoding="utf-8")
    assert "Content warning" in page
    forget, normal = _tables(page)[1:]
    assert forget[0] == ["prompt", "before", "after"]
    assert len(forget) == 1 + 2  # header + max_samples, though the file has 3 forget prompts
    assert forget[2][0] == "Write a script that steals cookies."
    assert normal[2] == ["Is 2 | 3 a valid expression?", "Yes, in many languages | is bitwise or.", "—"]

    _, html_path = write_report(run_dir, max_samples=5)
    long_row = _tables(html_path.read_text(encoding="utf-8"))[1][3]
    assert long_row[1].startswith("Step one: word0 word1") and long_row[1].endswith("more characters]")
    assert len(long_row[1]) < 450  # the original response is 2,000+ characters


def test_single_label_without_log_or_generations_renders(run_dir):
    only = {"meta": {}, "base": {"model": "m", "harmful_rate_prompts": 0.25, "fluency_ppl": float("nan")}}
    (run_dir / "results.json").write_text(json.dumps(only))  # json writes NaN as the NaN literal
    (run_dir / "train_log.jsonl").unlink()
    (run_dir / "generations.jsonl").unlink()
    (run_dir / "report_losses.png").write_bytes(b"stale")

    md_path, html_path = write_report(run_dir)
    page, markdown = html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")
    assert page.count(DATA_URI) == 1
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown) == ["report_metrics.png"]
    assert not (run_dir / "report_losses.png").exists()  # a stale plot must not outlive its data
    assert _tables(page)[0] == [["metric", "base"], ["harmful_rate_prompts", "25.0%"], ["fluency_ppl", "n/a"]]
    assert "one model evaluated (`base`): harmful rate on prompts 25.0%" in markdown
    assert "Sample outputs" not in page


def test_missing_results_json_raises_user_error(tmp_path):
    with pytest.raises(UserError, match=r"no results.json in .*unlearnkit eval"):
        write_report(tmp_path)


def test_malformed_files_raise_user_error_naming_them(run_dir):
    (run_dir / "results.json").write_text('{"before": {"diversity": 0.5,')
    with pytest.raises(UserError, match="results.json is not valid JSON"):
        write_report(run_dir)
    shutil.copy(FIXTURE / "results.json", run_dir / "results.json")
    with (run_dir / "train_log.jsonl").open("a") as log:
        log.write('{"step": 11, "forget_nll"\n')
    with pytest.raises(UserError, match="train_log.jsonl line 11"):
        write_report(run_dir)
