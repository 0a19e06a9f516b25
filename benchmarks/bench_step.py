"""Time ``train()``'s own step on real builtin batches: median s/step, positions, tokens/s, peak RSS.

Runs the real training loop (``unlearnkit.train.train``) on a preset and reads the ``step_time_s`` it
logs for each step (batch building + forward + backward + optimizer step); the first ``--warmup`` (2)
steps warm the allocator and the optimizer state and are not counted. The run is stopped right after its last timed step (no model is saved). Because it
only uses ``train()``, ``prepare_data`` and the step batch, the same script times older engines too:

    # after (this checkout), default (demo) and paper-template configs, under the shared CPU lock
    flock /tmp/unlearnkit-cpu.lock env PYTHONPATH=src .venv/bin/python benchmarks/bench_step.py --preset demo
    flock /tmp/unlearnkit-cpu.lock env PYTHONPATH=src .venv/bin/python benchmarks/bench_step.py --preset paper
    # before: another checkout's engine, same script
    flock /tmp/unlearnkit-cpu.lock env PYTHONPATH=/path/to/old/src .venv/bin/python benchmarks/bench_step.py --preset demo

Presets (builtin SmolLM2-135M, full finetuning, fp32, batch 2, the paper's full method):
    demo   the demo preset's step (configs/demo.yaml as of 6537b3c): chat template, K=2, max_length 96,
           40 AdvBench forget answers, TruthfulQA normal answers.
    paper  the paper's template and K=5 with its 512-token limit, 40 PKU-SafeRLHF forget answers, TruthfulQA normal.
Any key=value after the preset overrides the config (e.g. lora=true precision=bf16 model=...).

Positions: what the old engine computed per step (policy: every row padded to the step's longest; reference:
the normal rows padded to their longest) and what the packed engine computes (rows x row length).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import torch

# Written out in full (not read from configs/) so that an older engine is timed on exactly the same run.
DEMO = ["model=smollm2-135m", "forget=advbench_harmful_train", "normal=truthfulqa_train", "max_forget=40", "template=chat",
        "max_length=96", "method=ga_mismatch_kl", "num_mismatch=2", "batch_size=2", "lr=5e-5"]
PRESETS = {
    "demo": DEMO,
    "paper": DEMO[:3] + ["max_forget=40", "template=paper", "max_length=512", "method=ga_mismatch_kl", "num_mismatch=5",
                         "batch_size=2", "lr=5e-5", "forget=pku_harmful_train"],
}


class _Stop(Exception):
    """Raised from on_step_end after the last timed step: skips saving the model."""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _positions(config, steps: int) -> dict[str, float]:
    from unlearnkit.methods import METHODS
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.train import prepare_data

    method = METHODS[config.method.name]
    # normal_answers=self: the original model's answers (cached by the timed run) are the normal data.
    original = load_model(config.model) if config.data.normal_answers == "self" else None
    batcher = prepare_data(config, load_tokenizer(config.model), method, original_model=original)
    try:  # the packed engine, when this checkout has it
        from unlearnkit.step import step_positions
    except ImportError:
        step_positions = None
    totals: dict[str, float] = {}
    for step in range(steps):
        sb = batcher(step)
        mask = sb.batch["attention_mask"]
        old = mask.numel()
        if "normal" in sb.slices and method.uses_kl:
            normal = mask[sb.slices["normal"]]
            old += normal.shape[0] * int(normal.sum(dim=1).max())
        row = {"tokens": sb.num_tokens, "old_padded_positions": old}
        if step_positions is not None:
            found = step_positions(sb, method.step_needs, config.train.pack_tokens)
            row["packed_positions"] = found["policy_positions"] + found.get("reference_positions", 0)
        for key, value in row.items():
            totals[key] = totals.get(key, 0) + value / steps
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (allocator and optimizer state warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import unlearnkit
    from unlearnkit.config import load_config
    from unlearnkit.train import train

    preset_overrides = PRESETS[args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        total = args.steps + args.warmup
        config = load_config(None, [*preset_overrides, f"output_dir={tmp}/run", "progress=false", "save_every=0",
                                      f"max_steps={total}", "eval_before_after=false", *args.overrides])
        rss_at_end: list[float] = []

        def on_step_end(step: int) -> None:
            if step == total:
                rss_at_end.append(peak_rss_mib())
                raise _Stop

        try:
            train(config, on_step_end=on_step_end)
        except _Stop:
            pass
        log = [json.loads(line) for line in (Path(tmp) / "run" / "train_log.jsonl").read_text().splitlines()]
    times = [row["step_time_s"] for row in log[args.warmup:]]
    median = statistics.median(times)
    positions = _positions(config, total)
    figures = {
        "engine": str(Path(unlearnkit.__file__).parent), "preset": args.preset, "overrides": args.overrides,
        "threads": torch.get_num_threads(), "steps_timed": len(times), "median_s_per_step": median,
        "min_s_per_step": min(times), "tokens_per_step": positions["tokens"], "tokens_per_s": positions["tokens"] / median,
        "old_padded_positions_per_step": positions["old_padded_positions"],
        "packed_positions_per_step": positions.get("packed_positions"), "peak_rss_mib": rss_at_end[0],
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
