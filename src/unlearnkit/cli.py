"""Command line: ``unlearnkit run | demo | eval | attack | judge | report | scenario | bench | plan | methods``.

Bad input ends with one line on stderr naming the problem and the fix, exit status 2, no traceback.
A run stopped by SIGTERM/SIGINT checkpoints and exits 128 + the signal (143 / 130); a diverged run
(non-finite loss or gradient) exits 3. Both print one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from unlearnkit.errors import UserError


DEMO_KEYS = ("harmful_rate_forget", "harmful_rate_heldout", "on_topic_rate_benign", "similarity_to_original_benign",
             "nm_rate_benign", "on_topic_rate_benign2", "similarity_to_original_benign2", "nm_rate_benign2", "refusal_rate_overrefusal", "on_topic_rate_overrefusal", "fluency_ppl_benign", "distinct2_benign",
             "forget_nll_forget")


def run_and_evaluate(config, resume: bool = False, table_keys: tuple[str, ...] | None = None) -> dict:
    """Train; then, when the config asks, evaluate before/after, print the table and write the report."""
    from unlearnkit.train import train

    judge = None
    if config.eval.eval_before_after:
        from unlearnkit.evaluate.judges import load_judge
        from unlearnkit.evaluate.run import default_prompt_sets, resolve_device

        # Bad eval settings fail before training, not after: the prompt sets (overlap checks), device, judge.
        default_prompt_sets(config)
        resolve_device(config.eval)
        judge = load_judge(config.eval.judge, config.eval.judge_threshold)
    result = train(config, resume=resume)
    if not result.is_main_process:
        return {}  # multi-process run: the main process reports and evaluates
    print(f"unlearned for {result.steps} steps ({result.stop_reason}) in {result.seconds:.1f}s -> {result.output_dir}")
    if result.last_log:
        last = result.last_log
        print(f"last step: forget_nll {last['forget_nll']:.3f}  loss {last['loss']:.4f}")
    if not config.eval.eval_before_after:
        return {}
    from unlearnkit.evaluate.run import comparison_table, evaluate_run
    from unlearnkit.report import write_report

    info = {"steps": result.steps, "stop_reason": result.stop_reason, "train_seconds": round(result.seconds, 1)}
    results = evaluate_run(config, result.output_dir, info, progress=config.train.progress, judge=judge)
    print(comparison_table(results, table_keys))
    md, html = write_report(result.output_dir)
    print(f"results: {result.output_dir / 'results.json'}\nreport:  {html}")
    return results


def _cmd_run(args: argparse.Namespace) -> int:
    from unlearnkit.config import load_config

    run_and_evaluate(load_config(args.config, args.overrides), resume=args.resume)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearnkit.config import load_config

    if not Path(args.config).is_file():
        raise UserError(f"demo config {args.config} not found; run from the repository root or pass --config")
    config = load_config(args.config, ["overwrite=true", *args.overrides])
    print(f"demo: unlearning harmful answers from {config.model.name} ({config.method.name}), then evaluating before/after")
    run_and_evaluate(config, table_keys=DEMO_KEYS)
    if not args.no_attack:
        from unlearnkit.attack.report import summary_line
        from unlearnkit.attack.run import run_attack

        out = Path(config.train.output_dir)
        attack_dir = out.with_name(out.name + "_attack")
        print(f"demo: does the forgetting last? quant4 and relearn_forget on both models -> {attack_dir} (skip with --no-attack)")
        # 20 prompts per set keeps the closing check short (three evaluation rounds of both models); the full
        # table with every attack and the run's prompt counts is `unlearnkit attack`.
        results = run_attack(str(out), attack_dir, "quant4,relearn_forget", ["attack_max_prompts=20"], progress=config.train.progress)
        print(summary_line(results) + f"  (full table: {attack_dir / 'report.md'}; all attacks: unlearnkit attack {out} --output DIR)")
    return 0


def _model_labels(names: list[str]) -> list[tuple[str, str]]:
    labels: list[tuple[str, str]] = []
    for name in names:
        label, count = name, 2
        while label in {existing for existing, _ in labels} or label == "meta":
            label, count = f"{name}#{count}", count + 1
        labels.append((label, name))
    return labels


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dataclasses import replace

    from unlearnkit.config import load_config
    from unlearnkit.evaluate.run import comparison_table, default_prompt_sets, evaluate_models, prompt_file_set

    overrides = list(args.overrides) + ([f"judge={args.judge}"] if args.judge else [])
    config = load_config(args.config, overrides)
    sets = default_prompt_sets(config)
    for path in args.prompts or []:
        name = "prompts" if len(args.prompts) == 1 else f"prompts_{Path(path).stem}"
        sets.append(prompt_file_set(path, name))
    # A model named like the config's model takes its revision / trust_remote_code; others load as given.
    models = [(label, config.model if name == config.model.name else replace(config.model, name=name, revision=None, lora=False))
              for label, name in _model_labels(args.model)]
    results = evaluate_models(models, sets, config.eval, Path(args.output), template=args.template,
                              progress=config.train.progress, seed=config.train.seed)
    print(comparison_table(results))
    print(f"results: {Path(args.output) / 'results.json'}  generations: {Path(args.output) / 'generations.jsonl'}")
    return 0


def _cmd_attack(args: argparse.Namespace) -> int:
    from unlearnkit.attack.run import run_attack

    results = run_attack(args.target, args.output, args.attacks, list(args.overrides), progress=not args.quiet)
    print(_attack_table(results))
    print(f"results: {args.output}/results.json  report: {args.output}/report.html")
    return 0


def _attack_table(results: dict) -> str:
    from unlearnkit.attack.report import table_rows

    header, rows = table_rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _cmd_judge(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from unlearnkit.data import read_table, text_cell
    from unlearnkit.evaluate.judges import load_judge

    source = Path(args.input)
    if not source.is_file():
        raise UserError(f"input file {args.input} not found")
    rows = read_table(source)
    if not rows:
        raise UserError(f"input file {args.input} is empty; give one {{\"prompt\", \"response\"}} object per line")
    for number, row in enumerate(rows, 1):
        for key in ("prompt", "response"):
            if key in row:
                text_cell(row, key, args.input, number)  # a null or a number: one line naming row and column
            else:
                raise UserError(f"{args.input}: row {number} has no '{key}' text field; each row needs prompt and response")
    judge = load_judge(args.judge, args.threshold)
    verdicts = judge.judge([r["prompt"] for r in rows], [r["response"] for r in rows])
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for row, verdict in zip(rows, verdicts):
            handle.write(json.dumps({**row, "harmful": bool(verdict.harmful), "score": float(verdict.score)}) + "\n")
    flagged = sum(v.harmful for v in verdicts)
    print(f"{flagged}/{len(rows)} responses judged harmful ({args.judge}) -> {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearnkit.report import write_report

    md, html = write_report(Path(args.run_dir), max_samples=args.max_samples)
    print(f"wrote {md}\nwrote {html}")
    return 0


def _cmd_scenario(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearnkit.scenarios import run_scenario

    name, *overrides = args.scenario  # one positional list: argparse cannot take positionals on both sides of options
    output = Path(args.output or f"runs/scenario_{name}")
    print(f"scenario {name}: stages and evaluation in {output}")
    run_scenario(name, output, overrides, presets=Path(args.presets), fresh=args.fresh, progress=not args.quiet)
    if args.attack:
        from unlearnkit.attack.run import run_attack
        from unlearnkit.scenarios import SCENARIOS

        final = output / SCENARIOS[name].stages[-1].name  # the last stage's run folder: its config names the original
        print(f"scenario {name}: attacks on {final} -> {output / 'attack'}")
        results = run_attack(str(final), output / "attack", None, [], progress=not args.quiet)
        print(_attack_table(results))
        print(f"attack report: {output / 'attack' / 'report.html'}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearnkit.bench.tofu import load_bench_config, run_tofu

    name, *overrides = args.benchmark
    if name != "tofu":
        raise UserError(f"unknown benchmark '{name}'; choose one of: tofu")
    pinned = [*([f"method={args.method}"] if args.method else []), *([f"bench.split={args.split}"] if args.split else [])]
    preset = None if args.config.lower() == "none" else args.config  # none: the defaults (the full benchmark) + overrides
    bench, config = load_bench_config(preset, [*overrides, *pinned])
    output = Path(args.output or f"runs/bench_tofu_{bench.split}_{config.method.name}")
    print(f"bench tofu: {config.method.name} on {bench.split} -> {output}")
    run_tofu(bench, config, output, fresh=args.fresh, progress=not args.quiet)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from unlearnkit.config import load_config
    from unlearnkit.plan import format_plan, plan

    if args.gpu_memory <= 0:
        raise UserError(f"--gpu-memory must be > 0 GiB; got {args.gpu_memory}")
    print(format_plan(plan(load_config(args.config, args.overrides), args.gpu_memory, args.tokens)))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from unlearnkit.methods import METHODS

    for name, method in METHODS.items():
        print(f"{name:<15} {method.summary} [{method.paper}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from unlearnkit import __version__
    from unlearnkit.config import describe_fields

    parser = argparse.ArgumentParser(prog="unlearnkit", description="Make a language model forget specific outputs.")
    parser.add_argument("--version", action="version", version=f"unlearnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="unlearn: train a model to forget the forget set",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Unlearn with a YAML config plus key=value overrides (bare field name or section.field).",
        epilog="config fields (key  type  default: meaning):\n" + describe_fields(),
    )
    run.add_argument("--config", help="YAML preset (e.g. configs/smoke.yaml); defaults are the paper's")
    run.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. max_steps=10 lora=true")
    run.set_defaults(handler=_cmd_run)

    demo = sub.add_parser("demo", help="unlearn harmful answers from the builtin model, evaluate before/after, report")
    demo.add_argument("--config", default="configs/demo.yaml", help="demo preset (default configs/demo.yaml)")
    demo.add_argument("--no-attack", action="store_true",
                      help="skip the closing robustness check (quant4 and relearn_forget through `unlearnkit attack`)")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. output_dir=runs/demo2")
    demo.set_defaults(handler=_cmd_demo)

    evaluate = sub.add_parser("eval", help="evaluate one or more models side by side (the first is the baseline)")
    evaluate.add_argument("--model", action="append", required=True, help="builtin name, hub name or model folder; repeat")
    evaluate.add_argument("--prompts", action="append", help="extra harmful-prompt file (JSONL/CSV with a 'prompt' field); repeat")
    evaluate.add_argument("--judge", help="builtin (default), a classifier model name/path, or generative:NAME")
    evaluate.add_argument("--output", required=True, help="folder for results.json and generations.jsonl")
    evaluate.add_argument("--template", default="auto", choices=("auto", "chat", "paper", "plain"),
                          help="prompt format (auto: the chat template when the tokenizer has one)")
    evaluate.add_argument("--config", help="YAML with eval settings (eval_* fields)")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="eval overrides, e.g. eval_max_prompts=20")
    evaluate.set_defaults(handler=_cmd_eval)

    from unlearnkit.attack.run import ATTACKS

    attack = sub.add_parser(
        "attack", help="does the forgetting last? re-measure it after quantization, relearning, jailbreak and paraphrased prompts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate the original and the unlearned model under each attack (same prompt sets, judge and metrics as "
                    "`unlearnkit eval`) and report the share of the forgetting that came back.",
        epilog="attacks:\n" + "\n".join(f"  {name:<15} {text}" for name, text in ATTACKS.items())
               + "\nkeys: attack_max_prompts (the run's eval_max_prompts, at most 16), relearn_steps (10), relearn_lr (run lr x 10), relearn_examples (half the forget "
                 "set), quant_backend (auto|rtn|nf4), model_before (the original, for a model folder); other keys override the "
                 "run config (e.g. eval_device=cpu, judge=...)",
    )
    attack.add_argument("target", help="an unlearn run folder (config.yaml + model/) or a model folder with model_before=ORIGINAL")
    attack.add_argument("--output", required=True, help="folder for results.json, generations.jsonl, report.md/html and relearned models")
    attack.add_argument("--attacks", help=f"comma-separated, from {','.join(ATTACKS)} (default: every one that applies)")
    attack.add_argument("--quiet", action="store_true", help="no progress bars")
    attack.add_argument("overrides", nargs="*", metavar="key=value", help="attack keys and run-config overrides")
    attack.set_defaults(handler=_cmd_attack)

    judge = sub.add_parser("judge", help="judge prompt/response pairs for harmfulness")
    judge.add_argument("--judge", default="builtin", help="builtin, a classifier model name/path, or generative:NAME")
    judge.add_argument("--input", required=True, help="JSONL/CSV rows with 'prompt' and 'response'")
    judge.add_argument("--output", required=True, help="JSONL: the same rows with 'harmful' and 'score'")
    judge.add_argument("--threshold", type=float, help="override the judge's decision threshold")
    judge.set_defaults(handler=_cmd_judge)

    report = sub.add_parser("report", help="write report.md and report.html for a run or eval folder")
    report.add_argument("run_dir", help="folder holding results.json (and train_log.jsonl, generations.jsonl)")
    report.add_argument("--max-samples", type=int, default=5, help="sample outputs shown per prompt set")
    report.set_defaults(handler=_cmd_report)

    from unlearnkit.scenarios import SCENARIOS

    scenario = sub.add_parser(
        "scenario", help="run one of the paper's scenarios end to end (train every stage, evaluate, report)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n" + "\n".join(f"  {name:<14} {s.summary}" for name, s in SCENARIOS.items()),
    )
    scenario.add_argument("scenario", nargs="+", metavar="NAME [key=value ...]",
                          help=f"which scenario ({', '.join(SCENARIOS)}), then overrides for every stage (max_steps=2) "
                               "or one stage (memorize.max_steps=2)")
    scenario.add_argument("--output", help="folder for every stage and the results (default runs/scenario_NAME)")
    scenario.add_argument("--presets", default="configs", help="folder holding the scenario presets (default configs)")
    scenario.add_argument("--fresh", action="store_true", help="retrain every stage even when a finished one matches")
    scenario.add_argument("--quiet", action="store_true", help="no progress bars")
    scenario.add_argument("--attack", action="store_true",
                          help="then run every attack that applies on the final model (`unlearnkit attack`, into OUTPUT/attack)")
    scenario.set_defaults(handler=_cmd_scenario)

    bench = sub.add_parser(
        "bench", help="run a benchmark end to end (tofu: finetune target + retain models, unlearn, TOFU metrics + MIA, report)",
        description="TOFU: finetune the model on the fictitious authors (target) and without the forget split (retain), both "
                    "cached; unlearn the split from the target with --method; forget quality, model utility, MIA; report.",
    )
    bench.add_argument("benchmark", nargs="+", metavar="tofu [key=value ...]",
                       help="the benchmark (tofu), then overrides: bench keys (retain_authors=10, finetune_epochs=3, "
                            "eval_rows=20, ...) or run-config keys for the unlearning stage (lr=1e-5 max_steps=20)")
    bench.add_argument("--method", help="unlearning method (see `unlearnkit methods`)")
    bench.add_argument("--split", choices=("forget01", "forget05", "forget10"), help="TOFU forget split")
    bench.add_argument("--config", default="configs/bench/tofu.yaml",
                       help="bench preset (default configs/bench/tofu.yaml: the reduced CPU budget; configs/bench/tofu_full.yaml: "
                            "the full benchmark; none: built-in defaults)")
    bench.add_argument("--output", help="folder for results.json and the report (default runs/bench_tofu_SPLIT_METHOD)")
    bench.add_argument("--fresh", action="store_true", help="finetune the target and retain models again even when cached")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(handler=_cmd_bench)

    plan = sub.add_parser("plan", help="memory plan of a run on one GPU, on paper (model built on the meta device, no weights)")
    plan.add_argument("--config", help="YAML preset (e.g. configs/paper/harmful_llama-2-7b.yaml)")
    plan.add_argument("--gpu-memory", type=float, default=80.0, help="GPU memory in GiB (default 80)")
    plan.add_argument("--tokens", type=int, help="packed positions per step for the activation estimate "
                                                 "(default: the bound batch_size x (K + 2) x max_length)")
    plan.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lora=false optimizer=adamw_8bit")
    plan.set_defaults(handler=_cmd_plan)

    methods = sub.add_parser("methods", help="list the unlearning methods")
    methods.set_defaults(handler=_cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come on both sides of options (`run lr=1 --config c max_steps=2`); argparse
    # takes a positional list only once, so the rest arrives here.
    trailing = next((name for name in ("overrides", "scenario", "benchmark") if isinstance(getattr(args, name, None), list)), None)
    if extra and (trailing is None or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, trailing).extend(extra)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
    except UserError as exc:
        print(f"unlearnkit: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("unlearnkit: interrupted (use --resume to continue from the last checkpoint)", file=sys.stderr)
        code = 130
    if _is_worker_rank():
        _leave_now(code)
    return code


def _is_worker_rank() -> bool:
    """A non-main process of a multi-process run (torch already imported, its process group up, rank > 0)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_rank() != 0)


def _leave_now(code: int) -> None:
    """End a worker rank without interpreter finalization. Its work is done (the main process saves, evaluates
    and reports), but torch's gloo process group still holds C++ threads; torn down during finalization they can
    abort the process ("terminate called without an active exception", SIGABRT, a failed exit status after a
    good run: seen in a 2-process test under OMP_NUM_THREADS=1), and an explicit destroy_process_group hung
    once a rank whose peer (the store's host) had exited. Skipping finalization avoids both."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
