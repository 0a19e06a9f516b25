"""Ablations on the builtin model: train several variants on one budget, evaluate them together.

Every variant is the base config plus its own ``key=value`` overrides; all unlearned models and the
original are then evaluated together (same prompts, same judge, the original generated once), and a
table of forgetting beside utility (with 95% intervals) is printed and written to OUTPUT/ablation.md.

    .venv/bin/python benchmarks/ablation.py                      # the paper's claim: ga, ga_mismatch, ga_mismatch_kl, templated
    .venv/bin/python benchmarks/ablation.py --variant shipped: \\
        --variant self_kl:normal=alpaca_instructions,normal_answers=self [key=value ...]

A variant is ``NAME:key=value,key=value`` (an empty override list is the base config); trailing
``key=value`` arguments apply to every variant and to the evaluation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from unlearnkit.config import load_config
from unlearnkit.evaluate.run import default_prompt_sets, evaluate_models, format_value
from unlearnkit.scenarios import reusable
from unlearnkit.train import train

COLUMNS = ("harmful_rate_forget", "harmful_rate_heldout", "on_topic_rate_benign", "similarity_to_original_benign",
           "nm_rate_benign", "refusal_rate_overrefusal", "on_topic_rate_overrefusal", "fluency_ppl_benign", "forget_nll_forget")
PAPER_VARIANTS = ("ga:method=ga", "ga_mismatch:method=ga_mismatch", "ga_mismatch_kl:method=ga_mismatch_kl",
                  "templated:method=templated")


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"variant '{text}' is not NAME:key=value,key=value")
    return name.strip(), [o.strip() for o in overrides.split(",") if o.strip()]


def markdown_table(results: dict, columns: tuple[str, ...]) -> str:
    labels = [k for k in results if k != "meta"]
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for label in labels:
        row = results[label]
        cells = [format_value(key, row.get(key), row.get("ci", {}).get(key)) for key in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--variant", action="append", help="NAME:key=value,... (repeat); default: the paper's four methods")
    parser.add_argument("--output", default="runs/ablation")
    parser.add_argument("--columns", default=",".join(COLUMNS))
    parser.add_argument("--retrain", action="store_true", help="train every variant even when a finished run matches")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    root = Path(args.output)
    variants = [parse_variant(v) for v in (args.variant or PAPER_VARIANTS)]

    models, seconds = [], {}
    for name, overrides in variants:
        config = load_config(args.config, [*args.overrides, *overrides, f"output_dir={root / name}", "overwrite=true",
                                           "eval_before_after=false", "progress=false"])
        if not args.retrain and reusable(config, root / name):
            print(f"{name}: already trained with this config (reused; --retrain to redo)", flush=True)
        else:
            started = time.perf_counter()
            result = train(config)
            seconds[name] = time.perf_counter() - started
            print(f"{name}: {result.steps} steps in {result.seconds:.0f}s, last forget NLL {result.last_log['forget_nll']:.3f}", flush=True)
        models.append((name, str(root / name / "model")))

    config = load_config(args.config, args.overrides)
    results = evaluate_models([("original", config.model), *models], default_prompt_sets(config), config.eval, root,
                              template=config.data.template, progress=False, seed=config.train.seed,
                              meta={"ablation": {"config": args.config, "overrides": args.overrides,
                                                 "variants": {n: o for n, o in variants}, "train_seconds": seconds}})
    table = markdown_table(results, tuple(args.columns.split(",")))
    (root / "ablation.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
