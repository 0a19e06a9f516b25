"""bf16 weights: float32 master weights vs pure bf16 (round to nearest) vs bf16 with stochastic rounding.

Trains the tests' tiny random Llama (tests/conftest.py) with the paper's full method (GA + mismatch + KL),
K=2, 10 steps, once in fp32 and three times with precision=bf16 and a different optimizer:
- masters: unlearnkit's ``optimizer=adamw`` under bf16 (optim.MasterWeightAdamW);
- pure: torch AdamW directly on the bf16 weights (every update rounded to nearest);
- stochastic: torchao's AdamW with ``bf16_stochastic_round=True`` (skipped when torchao is missing).
Prints, per lr, how far each run's final weights are from the fp32 run's (as a share of the fp32 run's
travel from the start) and the largest per-step loss difference from fp32 (docs/gpu.md).

    flock /tmp/unlearnkit-cpu.lock env PYTHONPATH=src .venv/bin/python benchmarks/bf16_masters.py 1e-3 1e-5 2e-6
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(lrs: list[str]) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from accelerate.state import AcceleratorState
    from conftest import make_tiny_model_dir
    from safetensors.torch import load_file

    import unlearnkit.train as train_module
    from unlearnkit.config import load_config

    root = Path(tempfile.mkdtemp(prefix="bf16_masters_"))
    model = make_tiny_model_dir(root / "tiny", "chatml")
    (root / "forget.jsonl").write_text("".join(json.dumps({"question": f"How do I pick lock {i}?", "answer": f"Insert a tension wrench and rake pin {i}."}) + "\n" for i in range(6)))
    (root / "normal.jsonl").write_text("".join(json.dumps({"question": f"What is the capital of country {i}?", "answer": f"The capital is city {i}."}) + "\n" for i in range(8)))
    init = load_file(str(model / "model.safetensors"))
    real_build = train_module.build_optimizer

    def run(name: str, lr: str, *overrides: str) -> tuple[list[dict], dict]:
        AcceleratorState._reset_state()
        out = root / f"{name}-{lr}"
        train_module.train(load_config(None, [f"model={model}", f"forget={root / 'forget.jsonl'}", f"normal={root / 'normal.jsonl'}",
                                              f"output_dir={out}", "progress=false", f"lr={lr}", "max_steps=10", "num_mismatch=2",
                                              *overrides]))
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        return log, load_file(str(out / "model" / "model.safetensors"))

    def dist(a: dict, b: dict) -> float:
        return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in init).sqrt())

    for lr in lrs:
        log32, w32 = run("fp32", lr)
        travel = dist(w32, init)
        runs = {"masters": run("masters", lr, "precision=bf16")}
        train_module.build_optimizer = lambda params, name, lr, wd, masters=None: torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        runs["pure"] = run("pure", lr, "precision=bf16")
        try:
            from torchao.optim import _AdamW

            train_module.build_optimizer = lambda params, name, lr, wd, masters=None: _AdamW(params, lr=lr, weight_decay=wd,
                                                                                             bf16_stochastic_round=True)
            runs["stochastic"] = run("stochastic", lr, "precision=bf16")
        except ImportError:
            print("(torchao not installed: stochastic rounding skipped)")
        train_module.build_optimizer = real_build
        print(f"lr {lr}: fp32 travel {travel:.3g}")
        for name, (log, weights) in runs.items():
            worst = max(abs(a["loss"] - b["loss"]) for a, b in zip(log, log32))
            print(f"  {name:<10} apart from fp32 {dist(weights, w32):.3g} ({dist(weights, w32) / travel:.1%} of travel), "
                  f"max |dloss| {worst:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["1e-3", "1e-5", "2e-6"])
