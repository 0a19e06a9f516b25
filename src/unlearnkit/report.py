"""A run folder's results into ``report.md`` and a self-contained ``report.html``, with plots.

Reads RUN_DIR/results.json (required: ``{"meta": {...}, "<label>": {"model": ..., "<metric>": value}}``,
the first label being the baseline), and when present train_log.jsonl (one row per step) and
generations.jsonl (``{"model", "prompt_set", "prompt", "response"}`` rows). Every number and plot
comes from those files; how to print and judge a metric (format, direction, description) comes
from ``unlearnkit.evaluate.metrics.metric_info``, so new metric keys need no change here.

report.md links PNG plots saved beside it (``report_losses.png``, ``report_metrics.png``);
report.html embeds them as base64 data URIs and uses inline CSS only, so it is one portable file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the object API renders with Agg and leaves pyplot's global state alone
from matplotlib.ticker import FuncFormatter

from unlearnkit.errors import UserError
from unlearnkit.evaluate.metrics import metric_info, relative_change

__all__ = ["LOSS_TERMS", "MAX_RESPONSE_CHARS", "Run", "load_run", "write_report"]

LOSS_TERMS = ("forget_nll", "mismatch_nll", "kl", "loss")
"""train_log.jsonl columns plotted, one panel each (their scales differ by orders of magnitude)."""
HEADLINE_METRICS = ("harmful_rate", "leak_rate", "hallucination_rate", "hallucination_rate_judge", "forget_nll", "nm_rate",
                    "diversity", "normal_ppl", "similarity_to_original")
"""Base keys quoted in the summary paragraph, in this order, when the results have them."""
MAX_RESPONSE_CHARS = 400
CONTENT_WARNING = ("Content warning: the samples below are raw model outputs on the evaluation prompts "
                   "and may be harmful, offensive or false.")
CHANGE_NOTE = ("Relative change = (model - baseline) / |baseline|; better/worse follows each metric's direction "
               "(+inf: up from a baseline of 0).")
PLOT_FILES = {"losses": "report_losses.png", "metrics": "report_metrics.png"}
PLOT_TITLES = {"losses": "Training losses per term", "metrics": "Metrics per model"}


@dataclass
class Run:
    """Everything a report shows, as read from a run folder."""

    name: str
    meta: dict[str, Any]
    results: dict[str, dict[str, Any]]  # label -> {"model": str, metric key -> number | None}; first = baseline
    train_log: list[dict[str, Any]] = field(default_factory=list)
    generations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return list(self.results)

    @property
    def metric_keys(self) -> list[str]:
        """Numeric (or null) keys of any label, in first-seen order; strings such as "model" are not metrics."""
        keys: dict[str, None] = {}
        for values in self.results.values():
            for key, value in values.items():
                if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                    keys.setdefault(key)
        return list(keys)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of an optional JSON-lines file ([] when absent); blank lines are skipped."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {number} is not valid JSON ({exc.msg}); fix or delete that line") from exc
        if isinstance(row, dict):
            rows.append(row)
    return rows


def load_run(run_dir: Path) -> Run:
    """Read results.json (required), train_log.jsonl and generations.jsonl (optional) from ``run_dir``."""
    results_path = Path(run_dir) / "results.json"
    if not results_path.is_file():
        raise UserError(f"no results.json in {run_dir}; run `unlearnkit eval` or "
                        "`unlearnkit run ... eval_before_after=true` first")
    try:
        data = json.loads(results_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{results_path} is not valid JSON ({exc}); re-run the step that wrote it") from exc
    if not isinstance(data, dict):
        raise UserError(f"{results_path} must hold a JSON object of model labels; got {type(data).__name__}")
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    results = {label: values for label, values in data.items() if label != "meta"}
    for label, values in results.items():
        if not isinstance(values, dict):
            raise UserError(f"{results_path}: entry {label!r} must be an object of metric values; re-run the evaluation")
    return Run(Path(run_dir).resolve().name, meta, results,
               _read_jsonl(Path(run_dir) / "train_log.jsonl"), _read_jsonl(Path(run_dir) / "generations.jsonl"))


def _number(value: Any) -> float:
    """A result value as float; NaN for None or anything non-numeric (shown as n/a, left out of plots)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _format(key: str, value: Any) -> str:
    if math.isnan(_number(value)):
        return "n/a"
    info = metric_info(key)
    if info is not None:
        return info.format(value)
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _display_name(key: str) -> str:
    """"harmful_rate_forget" -> "harmful rate on forget prompts"; keys without a known base stay as they are."""
    info = metric_info(key)
    if info is None:
        return key
    suffix = key[len(info.key) + 1:].replace("_", " ")
    if suffix and not suffix.endswith("prompts"):  # "harmful_rate_prompts" -> "... on prompts", not "prompts prompts"
        suffix += " prompts"
    return info.key.replace("_", " ") + (f" on {suffix}" if suffix else "")


def _change_text(change: float, digits: int = 1) -> str:
    """Signed relative change as a percentage; growth from a zero baseline is unbounded, shown as +inf."""
    if math.isnan(change):
        return "n/a"
    return f"{change:+.0f}" if math.isinf(change) else f"{change:+.{digits}%}"


def _verdict(key: str, change: float) -> str:
    """"better" / "worse" for a relative change given the metric's direction; "" when unknown or unchanged."""
    info = metric_info(key)
    if info is None or math.isnan(change) or change == 0:
        return ""
    return "better" if (change > 0) == info.higher_is_better else "worse"


@dataclass
class MetricRow:
    key: str
    description: str
    values: list[str]  # one per label
    changes: list[tuple[str, str]]  # per non-baseline label: (relative change text, "better" | "worse" | "")


def _metric_rows(run: Run) -> list[MetricRow]:
    rows = []
    baseline, *others = run.labels
    for key in run.metric_keys:
        info = metric_info(key)
        base = _number(run.results[baseline].get(key))
        changes = []
        for label in others:
            change = relative_change(base, _number(run.results[label].get(key)))
            changes.append((_change_text(change), _verdict(key, change)))
        rows.append(MetricRow(key, info.description if info else "", [_format(key, run.results[label].get(key))
                                                                        for label in run.labels], changes))
    return rows


def _summary(run: Run) -> str:
    """One paragraph: what ran, and the headline metrics of each model against the baseline."""
    parts = [f"Run `{run.name}`"]
    train = run.meta.get("train") or {}
    if train.get("steps") is not None:
        seconds = _number(train.get("train_seconds"))
        seconds = f" in {seconds:.0f} s" if math.isfinite(seconds) else ""
        parts.append(f"trained {train['steps']} steps{seconds} (stop: {train.get('stop_reason', 'n/a')})")
    keys = [k for base in HEADLINE_METRICS for k in run.metric_keys if (i := metric_info(k)) and i.key == base]
    baseline, *others = run.labels
    if not others:
        quoted = "; ".join(f"{_display_name(k)} {_format(k, run.results[baseline].get(k))}" for k in keys)
        return ", ".join(parts) + f"; one model evaluated (`{baseline}`)" + (f": {quoted}." if quoted else ".")
    sentences = [", ".join(parts) + "."]
    for label in others:
        quoted = []
        for k in keys:
            before, after = run.results[baseline].get(k), run.results[label].get(k)
            change = relative_change(_number(before), _number(after))
            change_text = "" if math.isnan(change) else f" ({_change_text(change, digits=0)})"
            quoted.append(f"{_display_name(k)}: {_format(k, before)} -> {_format(k, after)}{change_text}")
        sentences.append(f"`{label}` vs `{baseline}`: " + ("; ".join(quoted) if quoted else "no headline metrics") + ".")
    return " ".join(sentences)


def _judge_note(meta: dict[str, Any]) -> str:
    judge = meta.get("judge")
    if not isinstance(judge, dict):
        return ""
    threshold = f" (threshold {judge['threshold']})" if judge.get("threshold") is not None else ""
    return f"Harm judge: {judge.get('name', 'unnamed')}{threshold}. {judge.get('note', '')}".strip()


def _details(run: Run) -> list[str]:
    """Short "what produced these numbers" lines: models, version, date, prompt sets, generation."""
    meta = run.meta
    lines = ["models: " + "; ".join(f"{label} = {values.get('model', '?')}" for label, values in run.results.items())]
    lines += [f"{name}: {meta[key]}" for key, name in (("unlearnkit_version", "unlearnkit version"), ("created", "created"))
             if meta.get(key) is not None]
    sets = meta.get("prompt_sets")
    if isinstance(sets, dict) and sets:
        lines.append("prompt sets: " + "; ".join(
            f"{name} ({info.get('source', '?')}, n={info.get('n', '?')})" if isinstance(info, dict) else f"{name} ({info})"
            for name, info in sets.items()))
    if isinstance(meta.get("generation"), dict):
        lines.append("generation: " + ", ".join(f"{k}={v}" for k, v in meta["generation"].items()))
    return lines


def _truncate(text: str, limit: int = MAX_RESPONSE_CHARS) -> str:
    """``text`` cut to about ``limit`` characters at a word boundary, saying how much was left out."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    cut = cut if cut > limit * 0.8 else limit
    return f"{text[:cut].rstrip()} … [{len(text) - cut} more characters]"


def _samples(run: Run, max_samples: int) -> dict[str, tuple[list[str], list[tuple[str, dict[str, str]]]]]:
    """prompt_set -> (model columns, up to ``max_samples`` (prompt, {model: response}) in file order)."""
    if max_samples == 0:
        return {}
    grouped: dict[str, dict[str, dict[str, str]]] = {}
    for row in run.generations:
        prompt_set, prompt, model = (str(row.get(k, "")) for k in ("prompt_set", "prompt", "model"))
        grouped.setdefault(prompt_set, {}).setdefault(prompt, {}).setdefault(model, str(row.get("response") or ""))
    samples = {}
    for prompt_set, prompts in grouped.items():
        seen = {m for responses in prompts.values() for m in responses}
        columns = [m for m in run.labels if m in seen] + sorted(seen - set(run.labels))
        samples[prompt_set] = (columns, list(prompts.items())[:max_samples])
    return samples


def _loss_figure(train_log: list[dict[str, Any]]) -> Figure | None:
    """One small panel per loss term that has at least one finite value; None when there is none."""
    steps = [_number(row.get("step", i + 1)) for i, row in enumerate(train_log)]
    series = {t: [_number(row.get(t)) for row in train_log] for t in LOSS_TERMS}
    series = {t: v for t, v in series.items() if any(math.isfinite(x) for x in v)}
    if not series:
        return None
    figure = Figure(figsize=(3.2 * len(series), 2.6), layout="constrained")
    for ax, (term, values) in zip(figure.subplots(1, len(series), squeeze=False)[0], series.items()):
        ax.plot(steps, values, marker="." if len(steps) <= 30 else None, color="tab:blue", linewidth=1.2)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return figure


def _metrics_figure(run: Run) -> Figure | None:
    """One small bar panel per metric, one bar per model; rates in %; missing values marked n/a."""
    keys, labels = run.metric_keys, run.labels
    if not keys:
        return None
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    tilt = 30 if sum(len(label) for label in labels) > 20 else 0  # long labels would overlap under the bars
    figure = Figure(figsize=(3.2 * ncols, (3.2 if tilt else 2.5) * nrows), layout="constrained")
    colors = [f"C{i % 10}" for i in range(len(labels))]
    for ax, key in zip(figure.subplots(nrows, ncols, squeeze=False).flat, keys):
        info = metric_info(key)
        scale = 100.0 if info is not None and "%" in info.fmt else 1.0
        heights = [_number(run.results[label].get(key)) * scale for label in labels]
        bars = ax.bar(range(len(labels)), [0.0 if math.isnan(h) else h for h in heights], color=colors)
        ax.bar_label(bars, [_format(key, run.results[label].get(key)) for label in labels], fontsize=7)
        direction = "" if info is None else (" (↑ better)" if info.higher_is_better else " (↓ better)")
        ax.set_title(key + direction, fontsize=9)
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=tilt, ha="right" if tilt else "center")
        ax.set_ylabel("%" if scale == 100.0 else "", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # no "1e-5" offset text over the title
        ax.margins(y=0.2)  # room for the value labels above the bars
        if all(math.isnan(h) for h in heights):  # nothing to scale: no meaningless axis ticks
            ax.set_ylim(0, 1)
            ax.set_yticks([])
    for ax in list(figure.axes)[len(keys):]:
        ax.set_visible(False)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # "tight": long titles are not cut off
    return buffer.getvalue()


def _md_cell(text: str) -> str:
    """Escaped for a Markdown table cell; HTML-escaped too so model output cannot inject markup."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _render_markdown(run: Run, rows: list[MetricRow], samples: dict, plots: list[str]) -> str:
    baseline, *others = run.labels
    header = ["metric", *run.labels, *(f"{label} vs {baseline}" for label in others)]
    lines = [f"# unlearnkit report: {run.name}", "", _summary(run), "", "## Metrics", ""]
    if note := _judge_note(run.meta):
        lines += [f"> {_md_cell(note)}", ""]
    lines += ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    for row in rows:
        changes = [f"{text} {verdict}".strip() for text, verdict in row.changes]
        lines.append("| " + " | ".join([f"`{row.key}`", *row.values, *changes]) + " |")
    lines += ["", CHANGE_NOTE, ""] + [f"- `{row.key}`: {row.description}" for row in rows if row.description] + [""]
    for name in plots:
        lines += [f"## {PLOT_TITLES[name]}", "", f"![{PLOT_TITLES[name]}]({PLOT_FILES[name]})", ""]
    if samples:
        lines += ["## Sample outputs", "", f"**{CONTENT_WARNING}**", ""]
        for prompt_set, (columns, prompts) in samples.items():
            lines += [f"### {_md_cell(prompt_set)} prompts", ""]
            for number, (prompt, responses) in enumerate(prompts, start=1):
                lines.append(f"{number}. **Prompt:** {_md_cell(_truncate(prompt))}")
                lines += [f"   - **{_md_cell(m)}:** {_md_cell(_truncate(responses.get(m, '—')))}" for m in columns]
            lines.append("")
    if details := _details(run):
        lines += ["## Run details", ""] + [f"- {_md_cell(line)}" for line in details] + [""]
    if run.meta.get("config"):
        lines += ["<details><summary>resolved config</summary>", "", "```json",
                  json.dumps(run.meta["config"], indent=2, default=str), "```", "", "</details>", ""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #d8d8d8;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f3f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.text{white-space:pre-wrap;max-width:30em;font-size:.88em}
.better{color:#17803d}.worse{color:#c2410c}.note{color:#555;font-size:.92em}
.warning{background:#fff7e6;border-left:4px solid #f59e0b;padding:.5em .8em}
[title]{text-decoration:underline dotted;cursor:help}img{max-width:100%}pre{background:#f6f8fa;padding:.8em;overflow:auto}
"""


def _render_html(run: Run, rows: list[MetricRow], samples: dict, pngs: dict[str, bytes]) -> str:
    esc = html.escape
    baseline, *others = run.labels
    header = ["metric", *run.labels, *(f"{label} vs {baseline}" for label in others)]
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>unlearnkit report: {esc(run.name)}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>unlearnkit report: {esc(run.name)}</h1>",
           "<p>" + re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(_summary(run))) + "</p>", "<h2>Metrics</h2>"]
    if note := _judge_note(run.meta):
        out.append(f"<p class='note'>{esc(note)}</p>")
    out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        name = f"<span title='{esc(row.description)}'>{esc(row.key)}</span>" if row.description else esc(row.key)
        cells = [f"<td>{name}</td>", *(f"<td class='num'>{esc(v)}</td>" for v in row.values)]
        cells += [f"<td class='{f'num {verdict}'.strip()}'>{esc(f'{text} {verdict}'.strip())}</td>"
                  for text, verdict in row.changes]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</table>", f"<p class='note'>{esc(CHANGE_NOTE)} Hover a metric name for its description.</p>"]
    for name, png in pngs.items():
        data = base64.b64encode(png).decode("ascii")
        out.append(f"<h2>{PLOT_TITLES[name]}</h2><img alt='{PLOT_TITLES[name]}' src='data:image/png;base64,{data}'>")
    if samples:
        out += ["<h2>Sample outputs</h2>", f"<p class='warning'>{esc(CONTENT_WARNING)}</p>"]
        for prompt_set, (columns, prompts) in samples.items():
            out.append(f"<h3>{esc(prompt_set)} prompts</h3><table><tr><th>prompt</th>"
                       + "".join(f"<th>{esc(m)}</th>" for m in columns) + "</tr>")
            for prompt, responses in prompts:
                texts = [prompt, *(responses.get(m, "—") for m in columns)]
                out.append("<tr>" + "".join(f"<td class='text'>{esc(_truncate(t))}</td>" for t in texts) + "</tr>")
            out.append("</table>")
    if details := _details(run):
        out.append("<h2>Run details</h2><ul>" + "".join(f"<li>{esc(line)}</li>" for line in details) + "</ul>")
    if run.meta.get("config"):
        config = json.dumps(run.meta["config"], indent=2, default=str)
        out.append(f"<details><summary>resolved config</summary><pre>{esc(config)}</pre></details>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(run_dir: Path, max_samples: int = 5) -> tuple[Path, Path]:
    """Write ``report.md`` (+ its PNG plots) and a self-contained ``report.html`` into ``run_dir``.

    Returns (markdown path, html path). Raises UserError when results.json is missing or malformed.
    Plots that cannot be drawn (no train_log.jsonl, no metrics) are left out, and a stale PNG of
    that name from an earlier report is removed so report.md never points at old numbers.
    """
    if max_samples < 0:
        raise UserError(f"max_samples must be 0 or more, got {max_samples}")
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if not run.labels:
        raise UserError(f"{run_dir / 'results.json'} holds no model results (only meta); re-run the evaluation")
    figures = {"losses": _loss_figure(run.train_log), "metrics": _metrics_figure(run)}
    pngs = {name: _png(figure) for name, figure in figures.items() if figure is not None}
    for name, filename in PLOT_FILES.items():
        if name in pngs:
            (run_dir / filename).write_bytes(pngs[name])
        else:
            (run_dir / filename).unlink(missing_ok=True)
    rows, samples = _metric_rows(run), _samples(run, max_samples)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    md_path.write_text(_render_markdown(run, rows, samples, list(pngs)), encoding="utf-8")
    html_path.write_text(_render_html(run, rows, samples, pngs), encoding="utf-8")
    return md_path, html_path
