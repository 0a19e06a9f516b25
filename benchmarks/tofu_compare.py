#!/usr/bin/env python3
"""Every unlearning method of the registry on TOFU with one budget: a markdown comparison table.

    python benchmarks/tofu_compare.py [--split forget05] [--config configs/bench/tofu.yaml]
                                      [--methods ga,npo] [--output runs/tofu_compare] [key=value ...]

Runs ``unlearnkit bench tofu`` once per method (``finetune`` is skipped: it is not unlearning). The
target and retain models are finetuned once and reused from the cache (so the first method pays for
them); each unlearned model is evaluated and then deleted. Prints the table and writes ``table.md``
and ``summary.json`` into ``--output``. Columns: forget quality (KS p-value vs the retain model; higher
is better), model utility (harmonic mean of 9; higher is better), MIA AUC with Min-K%++ (forget vs
never-trained authors; the retain model's value is the target), PrivLeak (0 is ideal), median seconds
per unlearning step. Run it under the CPU lock on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="forget05", choices=("forget01", "forget05", "forget10"))
    parser.add_argument("--config", default=str(REPO / "configs" / "bench" / "tofu.yaml"))
    parser.add_argument("--methods", help="comma-separated methods (default: every registry method except finetune)")
    parser.add_argument("--output", default="runs/tofu_compare")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from unlearnkit.bench.tofu import load_bench_config, run_tofu
    from unlearnkit.methods import METHODS

    methods = args.methods.split(",") if args.methods else [m for m in METHODS if m != "finetune"]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, reference = [], None
    for method in methods:
        method_started = time.perf_counter()
        try:
            bench, run = load_bench_config(args.config, [*args.overrides, f"method={method}", f"bench.split={args.split}",
                                                         "keep_model=false", "progress=false"])
            results = run_tofu(bench, run, out / method, progress=False)
        except Exception as exc:  # one broken method must not cost the others' results
            traceback.print_exc()
            rows.append({"method": method, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
            continue
        u, stage = results["unlearned"], results["meta"]["stages"]["unlearned"]
        reference = results
        rows.append({"method": method, "forget_quality": u["forget_quality"], "model_utility": u["model_utility"],
                     "mia_auc": u.get("mia_auc_min_k_plus_plus"), "privleak": u.get("privleak_min_k_plus_plus"),
                     "s_per_step": stage["median_step_s"], "steps": stage["steps"],
                     "wall_s": round(time.perf_counter() - method_started, 1)})
        print(f"{method}: FQ {_fmt(u['forget_quality'])} MU {_fmt(u['model_utility'])} wall {rows[-1]['wall_s']}s", flush=True)
    wall = time.perf_counter() - started

    lines = ["| method | forget quality | model utility | MIA AUC (Min-K%++) | PrivLeak (Min-K%++) | s/step |",
             "|---|---:|---:|---:|---:|---:|"]
    if reference is not None:
        for label in ("target", "retain"):
            r = reference[label]
            lines.append(f"| *{label} model* | {_fmt(r['forget_quality'])} | {_fmt(r['model_utility'])} | "
                         f"{_fmt(r.get('mia_auc_min_k_plus_plus'))} | {_fmt(r.get('privleak_min_k_plus_plus'))} | - |")
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | failed: {row['error']} | | | | |")
        else:
            lines.append(f"| {row['method']} | {_fmt(row['forget_quality'])} | {_fmt(row['model_utility'])} | {_fmt(row['mia_auc'])} | "
                         f"{_fmt(row['privleak'])} | {_fmt(row['s_per_step'], 2)} |")
    command = "python benchmarks/tofu_compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    footer = f"\n{len(rows)} methods on TOFU {args.split}, wall time {wall / 60:.1f} min (`{command.strip()}`).\n"
    table = "\n".join(lines) + "\n" + footer
    print(table)
    (out / "table.md").write_text(table)
    meta = reference["meta"] if reference is not None else {}
    (out / "summary.json").write_text(json.dumps({"rows": rows, "wall_seconds": round(wall, 1), "split": args.split,
                                                  "config": args.config, "overrides": args.overrides,
                                                  "bench": meta.get("bench"), "unlearn_config": meta.get("config"),
                                                  "stages": meta.get("stages")}, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
