"""TOFU end to end: ``unlearnkit bench tofu --method NAME --split forget05``.

Stages (Maini et al. 2024, arXiv:2401.06121):

    target    finetune the base model on the fictitious authors (``full``, or a subset: see below)
    retain    finetune the base model on the same data WITHOUT the forget split (the gold standard)
    unlearned unlearn the forget split from the target with the chosen method (retain data = normal data)
    evaluate  TOFU's metrics for target / retain / unlearned (unlearnkit.evaluate.tofu); membership
              inference, forget split vs authors no model trained on, and memorization of the forget
              split (unlearnkit.evaluate.mia, OpenUnlearning's definitions: docs/tofu_mia.md). PrivLeak
              and the reference attack compare each model with the retain model.

Target and retain models are finetuned with the ``finetune`` method and cached under the unlearnkit
cache dir, keyed by their resolved config and data, with their evaluation, so another method (or a
re-run) reuses both. Budget: the ``bench`` section of the YAML (TofuConfig). ``retain_authors`` > 0
keeps only the first N of the other fictitious authors (a reduced setting small enough for a CPU);
``holdout_authors`` authors after those are never trained on and serve as MIA non-members. The full
benchmark is ``retain_authors: 0`` (all 180/190/198 other authors), 5 epochs at lr 1e-5 (TOFU's
finetuning), every eval row; with every author trained, no held-out author is left for MIA (TOFU's
separate holdout split is not vendored), so MIA is skipped.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import hashlib
import html
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from unlearnkit import __version__
from unlearnkit.config import RunConfig, _flatten_yaml, _set, coerce_value, validate
from unlearnkit.errors import UserError

SPLITS = ("forget01", "forget05", "forget10")
EVAL_SETS = ("forget", "retain", "real_authors", "world_facts")


@dataclass
class TofuConfig:
    """The benchmark's own settings (YAML section ``bench``; overrides ``key=value`` or ``bench.key=value``)."""

    split: str = "forget05"
    retain_authors: int = 0  # first N non-forget fictitious authors the target/retain models learn (0 = all)
    holdout_authors: int = 0  # authors after those, never trained on: MIA non-members (0 = no MIA)
    finetune_epochs: float = 5.0
    finetune_lr: float = 1e-5
    finetune_batch_size: int = 32
    finetune_weight_decay: float = 0.01
    eval_rows: int = 0  # rows per evaluation set (0 = all)
    eval_max_new_tokens: int = 200
    eval_batch_size: int = 16
    mia_k: float = 0.4  # fraction of tokens in Min-K% / Min-K%++ (0.4: MUSE's and OpenUnlearning's PrivLeak)
    mia_gradnorm: bool = True  # the GradNorm attack (one backward pass per forget/holdout row)
    keep_model: bool = True  # keep the unlearned model folder (the comparison script drops it)


BENCH_FIELDS = {f.name: f for f in dataclasses.fields(TofuConfig)}


def _validate_bench(b: TofuConfig) -> None:
    from unlearnkit.builtin.datasets import TOFU_AUTHORS, TOFU_FORGET_AUTHORS

    if b.split not in SPLITS:
        raise UserError(f"bench split must be one of {', '.join(SPLITS)}; got {b.split!r}")
    others = TOFU_AUTHORS - TOFU_FORGET_AUTHORS[b.split]
    checks = [
        (b.retain_authors >= 0 and b.holdout_authors >= 0, "retain_authors and holdout_authors must be >= 0"),
        ((b.retain_authors or others) + b.holdout_authors <= others,
         f"retain_authors + holdout_authors must be <= {others} (the fictitious authors outside {b.split}); "
         "with retain_authors=0 (all) set holdout_authors=0"),
        (b.finetune_epochs > 0 and b.finetune_lr > 0 and b.finetune_batch_size >= 1, "finetune epochs, lr, batch size must be > 0"),
        (b.eval_rows >= 0 and b.eval_max_new_tokens >= 1 and b.eval_batch_size >= 1, "eval_rows >= 0, eval_max_new_tokens and eval_batch_size >= 1"),
        (0 < b.mia_k <= 1, "mia_k must be in (0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"bad bench config: {message}")


def load_bench_config(path: str | Path | None, overrides: Sequence[str]) -> tuple[TofuConfig, RunConfig]:
    """(bench settings, unlearning run config) from a YAML preset and ``key=value`` overrides.

    The YAML's ``bench`` section fills TofuConfig; every other key is an ordinary run-config key (model,
    template, max_length, method, lr, max_steps, ...) for the unlearning stage. The finetuning stages take
    the same model / template / max_length / precision / seed with the ``finetune_*`` settings.
    """
    from unlearnkit.config import parse_override

    bench, run = TofuConfig(), RunConfig()
    items: list[tuple[str, Any]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"bench config {path} not found; run from the repository root or pass --config")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"bench config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"bench config {path} must hold a mapping of keys to values")
        section = data.pop("bench", None) or {}
        if not isinstance(section, dict):
            raise UserError(f"bench config {path}: 'bench' must be a mapping of bench settings")
        items += [(f"bench.{k}", v) for k, v in section.items()] + _flatten_yaml(data, str(path))
    items += [parse_override(text) for text in overrides]
    for key, value in items:
        name = key.removeprefix("bench.")
        if key.startswith("bench.") or (name in BENCH_FIELDS and "." not in key):
            if name not in BENCH_FIELDS:
                raise UserError(f"unknown bench key '{key}'; bench keys: {', '.join(BENCH_FIELDS)}")
            setattr(bench, name, coerce_value(key, BENCH_FIELDS[name], value))
        else:
            _set(run, key, value)
    if not getattr(run.data, "forget_preferred_column", "x"):
        # Methods that prefer an alternative answer (dpo) take a perturbed (plausible, false) answer: see _write_data.
        run.data.forget_preferred_column = "alternate_answer"
    validate(run)
    _validate_bench(bench)
    return bench, run


# ----------------------------------------------------------------------------------------------- data
@dataclass
class TofuData:
    target_train: list[dict[str, Any]]  # forget split + retain authors
    retain_train: list[dict[str, Any]]  # retain authors only
    forget: list[dict[str, Any]]  # the forget split (perturbed fields)
    eval_sets: dict[str, list[dict[str, Any]]]  # forget / retain / real_authors / world_facts
    holdout: list[dict[str, Any]]  # never-trained authors (MIA non-members)


def _spread(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` rows evenly spaced over ``rows`` (all when n is 0 or >= len): every author of a set is
    represented, not only the first one (the files are ordered by author)."""
    if not n or n >= len(rows):
        return rows
    return [rows[i] for i in np.linspace(0, len(rows) - 1, n).round().astype(int)]


def tofu_data(bench: TofuConfig) -> TofuData:
    """Every set of the benchmark, from the vendored TOFU (unlearnkit.builtin.datasets.tofu_rows)."""
    from unlearnkit.builtin.datasets import TOFU_AUTHORS, TOFU_FORGET_AUTHORS, tofu_rows

    full = tofu_rows("full")
    first_forget_author = TOFU_AUTHORS - TOFU_FORGET_AUTHORS[bench.split]
    retain_authors = bench.retain_authors or first_forget_author
    retain_train = [r for r in full if r["author"] < retain_authors]
    forget = [r for r in full if r["author"] >= first_forget_author]
    holdout = [r for r in full if retain_authors <= r["author"] < retain_authors + bench.holdout_authors]
    # TOFU's retain evaluation set (authors 0-19), restricted to the authors the models learned.
    retain_eval = [r for r in tofu_rows("retain_perturbed") if r["author"] < retain_authors]
    if not retain_eval:
        raise UserError("no retain evaluation rows: TOFU's retain_perturbed covers authors 0-19; set retain_authors >= 1")
    sets = {"forget": forget, "retain": retain_eval, "real_authors": tofu_rows("real_authors"), "world_facts": tofu_rows("world_facts")}
    return TofuData(forget + retain_train, retain_train, forget,
                    {name: _spread(rows, bench.eval_rows) for name, rows in sets.items()}, _spread(holdout, bench.eval_rows))


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_data(rows: list[dict[str, Any]], folder: Path, alternate: bool = False) -> Path:
    """Content-addressed JSONL (question/answer) under ``folder``; the path names its content.

    ``alternate`` adds ``alternate_answer`` = the first perturbed (plausible but false) answer, the
    preferred answer of methods that need one (``forget_preferred_column``, e.g. dpo)."""
    text = "".join(json.dumps({"question": r["question"], "answer": r["answer"],
                               **({"alternate_answer": r["perturbed_answer"][0]} if alternate else {})}, ensure_ascii=False) + "\n"
                   for r in rows)
    path = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        staging.write_text(text, encoding="utf-8")
        staging.replace(path)
    return path


# ----------------------------------------------------------------------------------------------- finetuned models
# What decides a finetuned model (fields the finetuning stage reads); new fields of other sections (a
# method's hyper-parameters, eval settings) never invalidate the cache.
CACHE_KEY_FIELDS = {
    "model": ("name", "revision", "trust_remote_code", "gradient_checkpointing"),
    "data": ("template", "max_length"),
    "method": ("name",),
    "train": ("max_steps", "batch_size", "lr", "warmup_steps", "weight_decay", "max_grad_norm", "precision", "seed"),
}


def finetune_config(run: RunConfig, bench: TofuConfig, data_path: Path, n_rows: int) -> RunConfig:
    """The finetuning stage: the run's model/template/max_length/precision/seed, full weights, bench budget."""
    config = RunConfig(model=dataclasses.replace(run.model, lora=False), data=dataclasses.replace(run.data),
                       train=dataclasses.replace(run.train))
    config.method.name = "finetune"
    config.data.forget, config.data.max_forget, config.data.forget_where = str(data_path), 0, ""
    config.data.forget_question_column, config.data.forget_answer_column = "question", "answer"
    config.data.normal_answers, config.data.mismatch_pool = "dataset", ""  # finetuning has no mismatch term
    t = config.train
    t.batch_size, t.lr, t.weight_decay = bench.finetune_batch_size, bench.finetune_lr, bench.finetune_weight_decay
    t.max_steps = max(1, math.ceil(bench.finetune_epochs * n_rows / bench.finetune_batch_size))
    t.warmup_steps, t.forget_threshold, t.time_budget_s, t.save_mode, t.save_every = 0, None, None, "merged", 0
    t.max_grad_norm = 1.0
    validate(config)
    return config


def cached_finetune(config: RunConfig, role: str, root: Path, fresh: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse) a finetuned model; returns its folder and run info. The key is the config + data content."""
    from unlearnkit.train import train

    data_sha = hashlib.sha256(Path(config.data.forget).read_bytes()).hexdigest()
    values = config.to_dict()
    resolved = {section: {k: values[section].get(k) for k in keys} for section, keys in CACHE_KEY_FIELDS.items()}
    resolved["data"]["forget"] = data_sha
    out = root / f"{role}-{_digest(resolved)}"
    model_dir, info_path = out / "model", out / "run_info.json"
    if not fresh and (model_dir / "config.json").is_file() and info_path.is_file():
        print(f"tofu: {role} model cached -> {model_dir}")
        return model_dir, {"reused": True, **json.loads(info_path.read_text())}
    config.train.output_dir, config.train.overwrite = str(out), True
    started = time.perf_counter()
    result = train(config)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # optimizer state of a finished finetune: ~1 GB, never resumed
    print(f"tofu: {role} model finetuned {result.steps} steps in {result.seconds:.0f}s -> {model_dir}")
    return model_dir, {"reused": False, "steps": result.steps, "train_seconds": round(result.seconds, 1),
                       "wall_seconds": round(time.perf_counter() - started, 1)}


# ----------------------------------------------------------------------------------------------- evaluation
def _mean_nll(scores: Any) -> np.ndarray:
    return np.asarray(scores.mean_nll(), dtype=np.float64)


def _perturbed_nll(model: Any, tokenizer: Any, rows: list[dict[str, Any]], template: str, max_length: int, batch: int) -> np.ndarray:
    from unlearnkit.evaluate.generate import score_answers

    counts = {len(r["perturbed_answer"]) for r in rows}
    if len(counts) != 1:
        raise UserError(f"TOFU rows must have equally many perturbed answers, found counts {sorted(counts)}")
    per_row = counts.pop()
    questions = [r["question"] for r in rows for _ in range(per_row)]
    answers = [a for r in rows for a in r["perturbed_answer"]]
    scores = score_answers(model, tokenizer, questions, answers, template, max_length=max_length, batch_size=batch)
    return _mean_nll(scores).reshape(len(rows), per_row)


def evaluate_tofu_model(
    model: Any, tokenizer: Any, sets: dict[str, list[dict[str, Any]]], holdout: list[dict[str, Any]], *,
    template: str, max_length: int, max_new_tokens: int, batch_size: int, mia_k: float, gradnorm: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """TOFU metrics of one model (keys ``{set}_{prob|truth_ratio|rouge_l}``, ``model_utility``), the forget
    set's per-row truth ratios, its exact memorization and extraction strength, and membership AUCs of the
    forget set vs ``holdout`` (when given; ``mia_auc_{attack}``, the reference attack is added by summarize)."""
    from unlearnkit.evaluate import mia
    from unlearnkit.evaluate import tofu as metrics
    from unlearnkit.evaluate.generate import GenerationSettings, generate, score_answers

    settings = GenerationSettings(template=template, max_new_tokens=max_new_tokens, batch_size=batch_size, max_prompt_tokens=max_length)
    out: dict[str, Any] = {"samples": {}}
    forget_stats: list[mia.TokenStats] = []
    for name, rows in sets.items():
        questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]
        stats = mia.answer_token_stats(model, tokenizer, questions, answers, template, max_length, batch_size)
        answer_nll = np.array([-s.log_probs.mean() if s.log_probs.size else 0.0 for s in stats])
        perturbed = _perturbed_nll(model, tokenizer, rows, template, max_length, batch_size)
        fictitious = name in ("forget", "retain")
        if fictitious:
            paraphrased = _mean_nll(score_answers(model, tokenizer, questions, [r["paraphrased_answer"] for r in rows], template,
                                                  max_length=max_length, batch_size=batch_size))
            out[f"{name}_prob"] = metrics.answer_probability(answer_nll)
        else:  # real authors / world facts: the true answer is its own "paraphrase" (TOFU's base answer)
            paraphrased = answer_nll
            out[f"{name}_prob"] = metrics.relative_answer_probability(answer_nll, perturbed)
        ratios = metrics.truth_ratios(paraphrased, perturbed)
        out[f"{name}_truth_ratio"] = metrics.truth_ratio_score(ratios, forget=name == "forget")
        responses = generate(model, tokenizer, questions, settings, progress=progress, desc=f"tofu {name}").responses
        out[f"{name}_rouge_l"] = metrics.mean_rouge_l_recall(responses, answers)
        out["samples"][name] = [{"question": q, "answer": a, "response": g} for q, a, g in list(zip(questions, answers, responses))[:3]]
        if name == "forget":
            out["forget_truth_ratios"] = ratios.tolist()
            forget_stats = stats
            for key, values in mia.memorization_scores(stats).items():  # OpenUnlearning's EM and ES, forget split
                out[f"forget_{key}"] = float(values.mean()) if values.size else None
    out["model_utility"] = metrics.model_utility(out)
    if holdout:
        holdout_q, holdout_a = [r["question"] for r in holdout], [r["answer"] for r in holdout]
        holdout_stats = mia.answer_token_stats(model, tokenizer, holdout_q, holdout_a, template, max_length, batch_size)
        forget_scores = mia.attack_scores(forget_stats, mia_k)
        holdout_scores = mia.attack_scores(holdout_stats, mia_k)
        for attack in mia.TOKEN_ATTACKS:
            out[f"mia_auc_{attack}"] = mia.membership_auc(forget_scores[attack], holdout_scores[attack])
        # The reference attack needs the retain model's LOSS scores of the same rows: kept per row, paired in summarize.
        out["mia_loss_scores"] = {"forget": forget_scores["loss"].tolist(), "holdout": holdout_scores["loss"].tolist()}
        if gradnorm:
            forget_q, forget_a = [r["question"] for r in sets["forget"]], [r["answer"] for r in sets["forget"]]
            out["mia_auc_gradnorm"] = mia.membership_auc(mia.gradnorm_scores(model, tokenizer, forget_q, forget_a, template, max_length),
                                                         mia.gradnorm_scores(model, tokenizer, holdout_q, holdout_a, template, max_length))
    return out


def _eval_key(bench: TofuConfig, run: RunConfig, template: str) -> str:
    return _digest({"version": 2, "mia_gradnorm": bench.mia_gradnorm, "split": bench.split,
                    "retain_authors": bench.retain_authors, "holdout_authors": bench.holdout_authors,
                    "eval_rows": bench.eval_rows, "max_new_tokens": bench.eval_max_new_tokens, "mia_k": bench.mia_k,
                    "template": template, "max_length": run.data.max_length})


def evaluate_model_dir(model_dir: Path, data: TofuData, bench: TofuConfig, run: RunConfig, *, cache: bool, progress: bool) -> dict[str, Any]:
    """``evaluate_tofu_model`` of a saved model folder; with ``cache`` the result is kept beside the model."""
    import torch

    from unlearnkit.config import ModelConfig
    from unlearnkit.modeling import load_model, load_tokenizer

    template = run.data.template
    cached = model_dir.parent / f"tofu_eval-{_eval_key(bench, run, template)}.json"
    if cache and cached.is_file():
        return json.loads(cached.read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_config = ModelConfig(name=str(model_dir))
    tokenizer = load_tokenizer(model_config)
    model = load_model(model_config).to(device).eval()
    started = time.perf_counter()
    result = evaluate_tofu_model(model, tokenizer, data.eval_sets, data.holdout, template=template, max_length=run.data.max_length,
                                 max_new_tokens=bench.eval_max_new_tokens, batch_size=bench.eval_batch_size, mia_k=bench.mia_k,
                                 gradnorm=bench.mia_gradnorm, progress=progress)
    result["eval_seconds"] = round(time.perf_counter() - started, 1)
    del model
    gc.collect()
    if cache:
        cached.write_text(json.dumps(result))
    return result


# ----------------------------------------------------------------------------------------------- the pipeline
MODELS = ("target", "retain", "unlearned")
TABLE_KEYS = ("forget_quality", "model_utility", "privleak_min_k", "privleak_min_k_plus_plus", "forget_extraction_strength",
              "forget_exact_memorization", "forget_truth_ratio", "forget_prob", "forget_rouge_l", "retain_prob",
              "retain_truth_ratio", "retain_rouge_l", "real_authors_prob", "real_authors_truth_ratio", "real_authors_rouge_l",
              "world_facts_prob", "world_facts_truth_ratio", "world_facts_rouge_l", "mia_auc_loss", "mia_auc_zlib",
              "mia_auc_min_k", "mia_auc_min_k_plus_plus", "mia_auc_gradnorm", "mia_auc_reference")


def summarize(per_model: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add what compares a model with the retain model: forget quality (KS on truth ratios), the reference
    attack's AUC (the retain model as reference, as OpenUnlearning's TOFU config) and PrivLeak per attack
    (percent, MUSE's sign and denominator; ``privleak_min_k`` is the headline)."""
    from unlearnkit.evaluate import mia
    from unlearnkit.evaluate.tofu import forget_quality

    retain = per_model["retain"]
    for result in per_model.values():  # first every model's own figures (the retain model's too) ...
        result["forget_quality"] = forget_quality(result["forget_truth_ratios"], retain["forget_truth_ratios"])
        if "mia_loss_scores" in result and "mia_loss_scores" in retain:
            own, ref = result["mia_loss_scores"], retain["mia_loss_scores"]
            # reference score = LOSS(model) - LOSS(retain model) per row (mia.reference_score on mean log p)
            members = np.subtract(own["forget"], ref["forget"])
            nonmembers = np.subtract(own["holdout"], ref["holdout"])
            result["mia_auc_reference"] = mia.membership_auc(members, nonmembers)
    for result in per_model.values():  # ... then PrivLeak against the retain model's AUCs
        for attack in mia.ATTACKS:
            key = f"mia_auc_{attack}"
            if key in result and key in retain:
                result[f"privleak_{attack}"] = mia.priv_leak(result[key], retain[key])
    return per_model


def median_step_seconds(train_log: Path) -> float | None:
    """Median wall time of one unlearning step (train_log.jsonl's step_time_s)."""
    if not train_log.is_file():
        return None
    times = [json.loads(line)["step_time_s"] for line in train_log.read_text().splitlines() if line.strip()]
    return float(statistics.median(times)) if times else None


def run_tofu(bench: TofuConfig, run: RunConfig, output_dir: Path, *, fresh: bool = False, progress: bool = True) -> dict[str, Any]:
    """The whole benchmark; writes ``results.json``, ``report.md`` and ``report.html`` into ``output_dir``."""
    from unlearnkit.methods import METHODS
    from unlearnkit.modeling import cache_dir
    from unlearnkit.train import train

    if run.method.name == "finetune":
        raise UserError("method finetune is not unlearning; choose an unlearning method (see `unlearnkit methods`)")
    if run.method.name not in METHODS:
        raise UserError(f"unknown method '{run.method.name}'; choose one of: {', '.join(METHODS)}")
    started = time.perf_counter()
    output_dir = Path(output_dir)
    root = cache_dir() / "bench" / "tofu"
    data = tofu_data(bench)
    target_path = _write_data(data.target_train, root / "data")
    retain_path = _write_data(data.retain_train, root / "data")
    forget_path = _write_data(data.forget, root / "data", alternate=True)
    run.train.progress = run.train.progress and progress
    stages: dict[str, Any] = {}
    target_dir, stages["target"] = cached_finetune(finetune_config(run, bench, target_path, len(data.target_train)), "target", root, fresh)
    retain_dir, stages["retain"] = cached_finetune(finetune_config(run, bench, retain_path, len(data.retain_train)), "retain", root, fresh)

    unlearn = dataclasses.replace(run, model=dataclasses.replace(run.model, name=str(target_dir)),
                                  data=dataclasses.replace(run.data, forget=str(forget_path), normal=str(retain_path),
                                                           forget_question_column="question", forget_answer_column="answer",
                                                           normal_question_column="question", normal_answer_column="answer",
                                                           forget_where="", normal_where=""),
                                  train=dataclasses.replace(run.train, output_dir=str(output_dir / "unlearned"), overwrite=True),
                                  eval=dataclasses.replace(run.eval, eval_before_after=False))
    validate(unlearn)
    result = train(unlearn)
    print(f"tofu: unlearned with {run.method.name} for {result.steps} steps ({result.stop_reason}) in {result.seconds:.0f}s")
    stages["unlearned"] = {"steps": result.steps, "stop_reason": result.stop_reason, "train_seconds": round(result.seconds, 1),
                           "median_step_s": median_step_seconds(output_dir / "unlearned" / "train_log.jsonl")}

    per_model = {
        "target": evaluate_model_dir(target_dir, data, bench, run, cache=True, progress=progress),
        "retain": evaluate_model_dir(retain_dir, data, bench, run, cache=True, progress=progress),
        "unlearned": evaluate_model_dir(output_dir / "unlearned" / "model", data, bench, run, cache=False, progress=progress),
    }
    summarize(per_model)
    if not bench.keep_model:
        shutil.rmtree(output_dir / "unlearned" / "model", ignore_errors=True)
        shutil.rmtree(output_dir / "unlearned" / "checkpoints", ignore_errors=True)
    from unlearnkit.builtin.datasets import TOFU_CREDIT

    results = {
        "meta": {
            "benchmark": "tofu", "unlearnkit_version": __version__, "method": run.method.name, "split": bench.split,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "bench": dataclasses.asdict(bench), "config": unlearn.to_dict(), "stages": stages,
            "models": {"target": str(target_dir), "retain": str(retain_dir), "unlearned": str(output_dir / "unlearned" / "model")},
            "rows": {**{name: len(rows) for name, rows in data.eval_sets.items()}, "holdout": len(data.holdout),
                     "target_train": len(data.target_train), "retain_train": len(data.retain_train)},
            "data": TOFU_CREDIT, "wall_seconds": round(time.perf_counter() - started, 1),
        },
        **per_model,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    md, page = write_tofu_report(results, output_dir)
    print(results_table(results))
    print(f"results: {output_dir / 'results.json'}\nreport:  {md}\n         {page}")
    return results


# ----------------------------------------------------------------------------------------------- report
LABELS = {
    "forget_quality": "forget quality (KS p, higher = closer to retain model)",
    "model_utility": "model utility (harmonic mean of 9)",
    "privleak_min_k": "PrivLeak % Min-K% (MUSE; 0 = like retain, -100 = fully leaks)",
    "privleak_min_k_plus_plus": "PrivLeak % Min-K%++",
    "forget_extraction_strength": "extraction strength, forget (OpenUnlearning ES)",
    "forget_exact_memorization": "exact memorization, forget (OpenUnlearning EM)",
    "mia_auc_min_k": "MIA AUC Min-K% (forget vs held-out)",
    "mia_auc_min_k_plus_plus": "MIA AUC Min-K%++",
    "mia_auc_reference": "MIA AUC reference (vs the retain model)",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return str(value)


def _rows(results: dict[str, Any]) -> list[tuple[str, list[str]]]:
    keys = [k for k in TABLE_KEYS if any(k in results[m] for m in MODELS)]
    return [(LABELS.get(k, k), [_fmt(results[m].get(k)) for m in MODELS]) for k in keys]


def results_table(results: dict[str, Any]) -> str:
    """Plain-text table: one row per metric, one column per model."""
    rows = _rows(results)
    width = max(len(label) for label, _ in rows)
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{m:>10}" for m in MODELS)]
    lines += [f"{label:<{width}}  " + "  ".join(f"{v:>10}" for v in values) for label, values in rows]
    return "\n".join(lines)


def _notes(results: dict[str, Any]) -> list[str]:
    meta, bench = results["meta"], results["meta"]["bench"]
    cfg = meta["config"]
    stages = meta["stages"]
    budget = (f"the first {bench['retain_authors']} non-forget authors" if bench["retain_authors"] else "every non-forget author")
    return [
        f"Method `{meta['method']}` on TOFU `{meta['split']}`; base model `{meta['config']['model']['name']}` "
        f"finetuned on the forget split + {budget} ({meta['rows']['target_train']} QA; retain model: {meta['rows']['retain_train']} QA), "
        f"{bench['finetune_epochs']} epochs at lr {bench['finetune_lr']}, batch {bench['finetune_batch_size']}.",
        f"Unlearning: {stages['unlearned']['steps']} steps ({stages['unlearned']['stop_reason']}), lr {cfg['train']['lr']}, "
        f"batch {cfg['train']['batch_size']}, median {_fmt(stages['unlearned']['median_step_s'])} s/step; template "
        f"`{cfg['data']['template']}`, max_length {cfg['data']['max_length']}.",
        "Eval rows: " + ", ".join(f"{k} {v}" for k, v in meta["rows"].items() if k in (*EVAL_SETS, "holdout"))
        + f"; greedy answers up to {bench['eval_max_new_tokens']} tokens; Min-K k = {bench['mia_k']}.",
        "PrivLeak is MUSE's: ((1 - AUC) - (1 - AUC_retain)) / (1 - AUC_retain) x 100 with the forget split as members "
        "and never-trained authors as non-members; 0 = like the retain model, negative = the forget split still leaks "
        "(-100 = fully), positive = over-unlearned. MIA, ES and EM follow OpenUnlearning's code (docs/tofu_mia.md).",
        "Forget quality is a KS-test p-value on the forget-set truth ratios against the retain model (1.0 for the retain "
        "model itself); with few forget rows the test has little power, so only large differences show.",
        f"Data: {meta['data']}.",
    ]


def write_tofu_report(results: dict[str, Any], output_dir: Path) -> tuple[Path, Path]:
    """``report.md`` and a self-contained ``report.html`` (no external assets) from ``results``."""
    rows = _rows(results)
    title = f"TOFU {results['meta']['split']}: {results['meta']['method']}"
    md = [f"# {title}", "", "| metric | " + " | ".join(MODELS) + " |", "|---|" + "---:|" * len(MODELS)]
    md += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    md += ["", "## Notes", ""] + [f"- {n}" for n in _notes(results)] + ["", "## Sample answers (forget set)", ""]
    for model in MODELS:
        for sample in results[model]["samples"].get("forget", [])[:2]:
            md.append(f"- **{model}** - Q: {sample['question']}  \n  true: {sample['answer']}  \n  answer: {sample['response'] or '(empty)'}")
    md_path, html_path = output_dir / "report.md", output_dir / "report.html"
    md_path.write_text("\n".join(md) + "\n")
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", "<table><tr><th>metric</th>" + "".join(f"<th>{m}</th>" for m in MODELS) + "</tr>"]
    body += ["<tr><td>" + esc(label) + "</td>" + "".join(f"<td>{esc(v)}</td>" for v in values) + "</tr>" for label, values in rows]
    body += ["</table><h2>Notes</h2><ul>"] + [f"<li>{esc(n)}</li>" for n in _notes(results)] + ["</ul><h2>Sample answers (forget set)</h2><ul>"]
    for model in MODELS:
        for sample in results[model]["samples"].get("forget", [])[:2]:
            body.append(f"<li><b>{model}</b> Q: {esc(sample['question'])}<br>true: {esc(sample['answer'])}<br>"
                        f"answer: {esc(sample['response'] or '(empty)')}</li>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td:first-child{text-align:left}")
    html_path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
                         f"</head><body>{''.join(body)}</ul></body></html>\n")
    return md_path, html_path
