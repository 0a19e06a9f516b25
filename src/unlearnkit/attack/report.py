"""The attack report: one table, rows = attacks (``none`` first), per forgetting metric the original and
unlearned model's rate under the attack and the share of the forgetting that came back."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

NOTHING_FORGOTTEN = "n/a: nothing was forgotten"
ERASED = "n/a: the attack erased the original's rate"


def format_rate(value: float | None, interval: list[float] | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value * 100:.0f}%"
    return f"{text} [{interval[0] * 100:.0f}-{interval[1] * 100:.0f}%]" if interval else text


def _bounded(value: float) -> str:
    """A share shown within [0%, 100%]: an attack can overshoot (more than the original) or undershoot (even
    less than the unlearned model), which the raw value in results.json keeps; the table says so with >= / <=."""
    if value > 1:
        return ">=100%"
    if value < 0:
        return "<=0%"
    return f"{value * 100:.0f}%"


def format_recovered(value: float | None, interval: list[float] | None = None, reference: bool = False,
                     erased: bool = False) -> str:
    """The recovered share as shown: bounded to 0-100%, with its interval; n/a when nothing was forgotten or when
    the attack erased the original's own rate (run.attack_erased_original)."""
    if reference:
        return "-"
    if erased:
        return ERASED
    if value is None:
        return NOTHING_FORGOTTEN
    text = _bounded(value)
    if interval:
        low, high = (_bounded(x).lstrip("<>=") for x in interval)
        text += f" [{low.rstrip('%')}-{high}]"
    return text


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the attack table (shared by markdown and HTML)."""
    attacks = results["attacks"]
    metrics: list[tuple[str, str]] = []  # (set name, metric key) in the none row's order
    for name, entry in attacks["none"]["sets"].items():
        metrics.append((name, entry["metric"]))
    header = ["attack"]
    for _, metric in metrics:
        header += [f"{metric}: original", "unlearned", "recovered"]
    has_utility = any("utility" in a for a in attacks.values())
    if has_utility:
        header += ["benign on-topic (orig / unl)"]
    header += ["seconds"]
    rows = []
    for attack, data in attacks.items():
        row = [attack]
        for name, _ in metrics:
            entry = data["sets"].get(name)
            if entry is None:
                row += ["-", "-", "-"]
                continue
            n = f" (n={entry['n']})" if entry["n"] != attacks["none"]["sets"][name]["n"] else ""
            reference = attack == "none" and entry.get("note") != "nothing was forgotten"
            row += [format_rate(entry["original"], entry["original_ci"]) + n, format_rate(entry["unlearned"], entry["unlearned_ci"]),
                    format_recovered(entry.get("recovered"), entry.get("recovered_ci"), reference=reference,
                                     erased=entry.get("erased", False))]
        if has_utility:
            utility = data.get("utility")
            row.append(" / ".join(format_rate(utility[label].get("on_topic_rate_benign")) for label in ("original", "unlearned"))
                       if utility else "-")
        row.append(f"{data['seconds']:.0f}")
        rows.append(row)
    return header, rows


def _notes(results: dict[str, Any]) -> list[str]:
    meta, attacks = results["meta"], results["attacks"]
    notes = [f"Target: {meta['target']}; original model `{meta['original_model']}`, unlearned model `{meta['unlearned_model']}`.",
             f"recovered = {meta['recovered']}. 0%: nothing came back; 100%: the unlearned model is back at the original's rate "
             "(shown bounded to 0-100%; results.json keeps the raw value).",
             "Each attack is applied to both models the same way; the original column shows the attack's own effect."]
    if meta.get("judge"):
        from unlearnkit.evaluate.run import judge_error_bar

        notes.append(judge_error_bar(meta["judge"]))
    for attack, data in attacks.items():
        if attack == "none":
            continue
        text = f"**{attack}**: {data['description']}"
        if data.get("quantization"):
            q = data["quantization"]
            text += f"; {q['scheme']}, {q['layers']} layers; kept in full precision: {q['kept_full_precision']}"
        if data.get("relearn"):
            r = data["relearn"]
            text += f"; {r['steps']} steps, lr {r['lr']:g}, batch {r['batch_size']}, {r['examples']} examples"
            if "evaluated_forget_half" in r:
                text += f"; forget metrics on the other {r['evaluated_forget_half']} examples"
        notes.append(text + ".")
        for name, entry in data["sets"].items():
            if entry.get("erased"):
                fix = f" (a gentler attacker measures it, e.g. relearn_lr={data['relearn']['lr'] / 10:g})" if data.get("relearn") else ""
                notes.append(f"**{attack}** on {name}: {entry['note']}{fix}.")
    for attack, why in meta.get("skipped", {}).items():
        notes.append(f"skipped {attack}: {why}")
    return notes


def write_attack_report(folder: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    header, rows = table_rows(results)
    notes = _notes(results)
    md = ["# Does the forgetting last? (`unlearnkit attack`)", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    md += [""] + [f"- {note}" for note in notes] + [""]
    (folder / "report.md").write_text("\n".join(md))
    cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)  # noqa: E731
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>unlearnkit attack</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>",
            "<h1>Does the forgetting last?</h1>", "<table>", f"<tr>{cells(header, 'th')}</tr>"]
    page += [f"<tr>{cells(row, 'td')}</tr>" for row in rows]
    page += ["</table>", "<ul>"] + [f"<li>{html.escape(note.replace('**', ''))}</li>" for note in notes] + ["</ul></body></html>"]
    (folder / "report.html").write_text("\n".join(page))
    return folder / "report.md", folder / "report.html"


def summary_line(results: dict[str, Any], attacks: tuple[str, ...] = ("quant4", "relearn_forget")) -> str:
    """One line: the recovered share per attack on the first forgetting set (for `unlearnkit demo`)."""
    parts = []
    for attack in attacks:
        data = results["attacks"].get(attack)
        if not data or not data["sets"]:
            continue
        name, entry = next(iter(data["sets"].items()))
        parts.append(f"{attack} {format_recovered(entry.get('recovered'), entry.get('recovered_ci'), erased=entry.get('erased', False))}"
                     f" of {entry['metric']}")
    return "robustness: recovered share " + ("; ".join(parts) if parts else "n/a")
