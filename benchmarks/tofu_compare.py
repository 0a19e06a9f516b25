#!/usr/bin/env python3
"""Every unlearning method of the registry on TOFU with one budget: a markdown comparison table.

    python benchmarks/tofu_compare.py [--split forget05] [--config configs/bench/tofu.yaml]
                                      [--methods ga,npo] [--output runs/tofu_compare] [key=value ...]

Runs ``unlearnkit bench tofu`` once per method (``finetune`` is skipped: it is not unlearning). The
target and retain models are finetuned once and reused from the cache (so the first method pays for
them); each unlearned model is evaluated and then deleted. Prints the table and writes ``table.md``
and ``summary.json`` (every figure of every model) into ``--output``. Columns: forget quality (KS p-value
vs the retain model; higher is better), model utility (harmonic mean of 9; higher is better), MIA AUC
with Min-K% k=0.4 (forget vs never-trained authors; the retain model's value is the target), PrivLeak
in percent on Min-K% (MUSE's headline) and Min-K%++ (0 is ideal, negative = still leaks, -100 = fully),
extraction strength and exact memorization of the forget split (OpenUnlearning's; the retain model's
value is the target), median seconds per unlearning step. Definitions: docs/tofu_mia.md. Run it under
the CPU lock on a shared machine.
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


COLUMNS = {  # results.json key -> column heading
    "forget_quality": "forget quality", "model_utility": "model utility", "mia_auc_min_k": "MIA AUC (Min-K%)",
    "privleak_min_k": "PrivLeak % (Min-K%)", "privleak_min_k_plus_plus": "PrivLeak % (Min-K%++)",
    "forget_extraction_strength": "ES forget", "forget_exact_memorization": "EM forget",
}


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
        rows.append({"method": method, **{key: u.get(key) for key in COLUMNS},
                     "all": {k: v for k, v in u.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                     "s_per_step": stage["median_step_s"], "steps": stage["steps"],
                     "wall_s": round(time.perf_counter() - method_started, 1)})
        print(f"{method}: FQ {_fmt(u['forget_quality'])} MU {_fmt(u['model_utility'])} wall {rows[-1]['wall_s']}s", flush=True)
    wall = time.perf_counter() - started

    lines = ["| method | " + " | ".join(COLUMNS.values()) + " | s/step |", "|---|" + "---:|" * (len(COLUMNS) + 1)]

    def cells(values: dict) -> str:
        return " | ".join(_fmt(values.get(key), 1 if key.startswith("privleak") else 3) for key in COLUMNS)

    if reference is not None:
        for label in ("target", "retain"):
            lines.append(f"| *{label} model* | {cells(reference[label])} | - |")
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | failed: {row['error']} |" + " |" * len(COLUMNS))
        else:
            lines.append(f"| {row['method']} | {cells(row)} | {_fmt(row['s_per_step'], 2)} |")
    command = "python benchmarks/tofu_compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    footer = f"\n{len(rows)} methods on TOFU {args.split}, wall time {wall / 60:.1f} min (`{command.strip()}`).\n"
    table = "\n".join(lines) + "\n" + footer
    print(table)
    (out / "table.md").write_text(table)
    meta = reference["meta"] if reference is not None else {}
    models = {label: {k: v for k, v in reference[label].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
              for label in ("target", "retain")} if reference is not None else {}
    (out / "summary.json").write_text(json.dumps({"rows": rows, "models": models, "wall_seconds": round(wall, 1), "split": args.split,
                                                  "config": args.config, "overrides": args.overrides,
                                                  "bench": meta.get("bench"), "unlearn_config": meta.get("config"),
                                                  "stages": meta.get("stages")}, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
