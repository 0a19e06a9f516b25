"""Relearning attacks: a few steps of plain finetuning, through the same training loop as `unlearnkit run`.

``relearn_forget`` finetunes on half of the run's forget examples (a seeded permutation splits them;
the other half is what the attack evaluates, so no evaluated answer was trained on); ``relearn_benign``
finetunes on the run's normal data only (Lucki et al. 2024: unrelated examples can undo unlearning).
Both the original and the unlearned model are finetuned the same way. A relearn run is method
``finetune`` with the run's template, max_length, seed and precision, batch 2, no warm-up; its model
is cached under the attack folder and reused while its resolved config (data file included, named by
its content) is unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unlearnkit.config import MethodConfig, RunConfig, validate
from unlearnkit.data import QAExample

RELEARN_BATCH = 2


@dataclass(frozen=True)
class ForgetSplit:
    """Indices into the run's forget examples: ``train`` for relearning, ``evaluate`` for the attack's forget metrics."""

    train: tuple[int, ...]
    evaluate: tuple[int, ...]


def split_forget(n: int, seed: int) -> ForgetSplit:
    """Halves of ``n`` forget examples by a seeded permutation (the relearn half gets the smaller half)."""
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return ForgetSplit(tuple(sorted(int(i) for i in order[:half])), tuple(sorted(int(i) for i in order[half:])))


def write_examples(examples: list[QAExample], folder: Path) -> Path:
    """The relearn data as a JSONL file named by its content (so a changed set is a changed config)."""
    text = "".join(json.dumps({"question": e.question, "answer": e.answer}) + "\n" for e in examples)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"data-{digest}.jsonl"
    if not path.is_file():
        staging = path.with_suffix(".tmp")
        staging.write_text(text)
        staging.replace(path)
    return path


def relearn_config(run: RunConfig, model: str, data_file: Path, output_dir: Path, steps: int, lr: float,
                   progress: bool = True) -> RunConfig:
    """The finetuning run of a relearning attack, derived from the unlearning run's config."""
    config = copy.deepcopy(run)
    same_model = model == run.model.name
    m = config.model
    m.name, m.revision = model, (m.revision if same_model else None)
    m.lora = False  # an attacker finetunes the released weights in full
    config.method = MethodConfig(name="finetune")
    d = config.data
    d.forget, d.forget_split, d.forget_question_column, d.forget_answer_column = str(data_file), "train", "question", "answer"
    d.forget_where, d.forget_preferred_column, d.max_forget = "", "", 0
    d.mismatch_pool = ""  # finetuning has no mismatch term
    t = config.train
    t.output_dir, t.max_steps, t.lr, t.batch_size = str(output_dir), steps, lr, RELEARN_BATCH
    t.warmup_steps, t.save_every, t.keep_checkpoints, t.forget_threshold, t.time_budget_s = 0, 0, 1, None, None
    t.save_mode, t.overwrite, t.progress = "merged", True, progress
    t.sam_rho, t.guard_every = 0.0, 0  # an attacker's plain finetune: none of the unlearning run's defences or checks
    config.eval.eval_before_after = False
    validate(config)
    return config


SOURCE = "relearn_source.json"


def relearn(config: RunConfig, progress_label: str = "") -> tuple[Path, bool]:
    """Train ``config`` (a relearn_config) unless a finished run with the same config FROM THE SAME WEIGHTS is
    cached (a rerun of `unlearnkit run` rewrites the unlearned model under the same path); (model folder, reused)."""
    from unlearnkit.own_answers import model_fingerprint
    from unlearnkit.scenarios import reusable
    from unlearnkit.train import train

    out = Path(config.train.output_dir)
    source = {"model_fingerprint": model_fingerprint(config.model)}
    saved = out / SOURCE
    if reusable(config, out) and saved.is_file() and json.loads(saved.read_text()) == source:
        return out / "model", True
    if progress_label:
        print(f"attack: {progress_label}: {config.train.max_steps} finetuning steps of {config.model.name}")
    train(config)
    saved.write_text(json.dumps(source))
    return out / "model", False
