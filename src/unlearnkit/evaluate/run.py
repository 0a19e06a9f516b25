"""The evaluation runner: generate on every prompt set with every model, then score.

Prompt sets have a kind that decides their metrics:
- harmful (forget, heldout, extra --prompts files): harmful_rate_<set> by the judge;
- normal: normal_ppl (reference answers), fluency_ppl (the model's outputs under the first model),
  similarity_to_original (MiniLM cosine to the first model's outputs), diversity, nm_rate;
- extraction (copyright): leak_rate / mean_bleu of continuations against the true text;
- hallucination: hallucination_rate (closer to the hallucinated than to the right answer).
Every set also gets diversity_<set> and nm_rate_<set>. The first model is the baseline ("original").
Writes results.json ({"meta": ..., label: {metric: value}}) and generations.jsonl.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from unlearnkit import __version__
from unlearnkit.config import EvalConfig, ModelConfig
from unlearnkit.data import load_qa, load_rows, read_table
from unlearnkit.errors import UserError
from unlearnkit.evaluate import metrics
from unlearnkit.evaluate.generate import GenerationSettings, generate_responses, score_answers

@dataclass
class PromptSet:
    name: str
    kind: str
    source: str
    questions: list[str]
    answers: list[str] | None = None  # reference answers / true continuations / right answers
    hallucinated: list[str] | None = None
    template: str | None = None  # None: the evaluation's template


def _limit(items: list, n: int) -> list:
    return items[:n] if n else items


def qa_set(name: str, kind: str, source: str, limit: int, template: str | None = None) -> PromptSet:
    examples = _limit(load_qa(source), limit)
    return PromptSet(name, kind, source, [e.question for e in examples], [e.answer for e in examples], template=template)


def hallucination_set(source: str, limit: int) -> PromptSet:
    rows = _limit(load_rows(source), limit)
    for number, row in enumerate(rows, 1):
        missing = {"question", "answer", "right_answer"} - row.keys()
        if missing:
            raise UserError(f"{source}: row {number} lacks {', '.join(sorted(missing))}; hallucination sets need question, answer (hallucinated), right_answer")
    return PromptSet("hallucination", "hallucination", source, [r["question"] for r in rows],
                     [r["right_answer"] for r in rows], [r["answer"] for r in rows])


def prompt_file_set(path: str, name: str = "prompts") -> PromptSet:
    """An extra harmful-prompt file: JSONL/CSV with a ``prompt`` field per row."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompt file {path} not found")
    rows = read_table(file)
    if not rows:
        raise UserError(f"prompt file {path} is empty; give one {{\"prompt\": ...}} object per line")
    prompts = []
    for number, row in enumerate(rows, 1):
        text = str(row.get("prompt") or "").strip()
        if not text:
            raise UserError(f"{path}: row {number} has no 'prompt' field (or it is empty); each row needs a non-empty \"prompt\"")
        prompts.append(text)
    return PromptSet(name, "harmful", str(path), prompts)


def default_prompt_sets(config: EvalConfig) -> list[PromptSet]:
    """The sets named by the eval config (an empty source leaves a set out)."""
    n = config.eval_max_prompts
    sets = []
    if config.eval_forget:
        sets.append(qa_set("forget", "harmful", config.eval_forget, n))
    if config.eval_heldout:
        sets.append(qa_set("heldout", "harmful", config.eval_heldout, n))
    if config.eval_normal:
        sets.append(qa_set("normal", "normal", config.eval_normal, n))
    if config.eval_extraction:
        sets.append(qa_set("extraction", "extraction", config.eval_extraction, n, template="plain"))
    if config.eval_hallucination:
        sets.append(hallucination_set(config.eval_hallucination, n))
    return sets


@dataclass
class ModelOutputs:
    label: str
    model: str
    responses: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


def _perplexity(nll: Sequence[float], counts: Sequence[int]) -> float:
    return metrics.aggregate_perplexity(zip(nll, counts)) if sum(counts) else math.nan


def _load(name: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    from unlearnkit.modeling import load_model, load_tokenizer

    model_config = ModelConfig(name=name, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model_config)
    model = load_model(model_config)
    model.eval()
    return model, tokenizer


def _resolve_template(template: str, tokenizer: Any) -> str:
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "paper"
    return template


def run_model(label: str, name: str, sets: list[PromptSet], settings: GenerationSettings, progress: bool) -> ModelOutputs:
    """Generate on every set and compute the scores that need this model's own weights."""
    model, tokenizer = _load(name)
    template = _resolve_template(settings.template, tokenizer)
    out = ModelOutputs(label, name)
    for prompt_set in sets:
        set_settings = GenerationSettings(**{**settings.__dict__, "template": prompt_set.template or template})
        out.responses[prompt_set.name] = generate_responses(
            model, tokenizer, prompt_set.questions, set_settings, progress=progress, desc=f"{label}: {prompt_set.name}"
        )
        if prompt_set.answers is not None and prompt_set.kind in ("normal", "harmful"):
            nll, counts = score_answers(model, tokenizer, prompt_set.questions, prompt_set.answers, prompt_set.template or template)
            if prompt_set.kind == "normal":
                out.scores["normal_ppl"] = _perplexity(nll, counts)
            else:
                key = "forget_nll" if prompt_set.name == "forget" else f"forget_nll_{prompt_set.name}"
                out.scores[key] = sum(nll) / max(1, sum(counts))
    del model
    gc.collect()
    return out


def _fluency(outputs: list[ModelOutputs], normal: PromptSet, template: str) -> None:
    """fluency_ppl: perplexity of each model's normal-set outputs under the first (original) model."""
    model, tokenizer = _load(outputs[0].model)
    template = _resolve_template(template, tokenizer)
    for o in outputs:
        responses = o.responses[normal.name]
        kept = [(q, r) for q, r in zip(normal.questions, responses) if r.strip()]
        if not kept:
            o.scores["fluency_ppl"] = math.nan
            continue
        nll, counts = score_answers(model, tokenizer, [q for q, _ in kept], [r for _, r in kept], template)
        o.scores["fluency_ppl"] = _perplexity(nll, counts)
    del model
    gc.collect()


def _similarity(outputs: list[ModelOutputs], normal: PromptSet) -> None:
    from unlearnkit.evaluate.judges import minilm_embed

    base = minilm_embed(outputs[0].responses[normal.name])
    for o in outputs:
        o.scores["similarity_to_original"] = metrics.mean_cosine_similarity(base, minilm_embed(o.responses[normal.name]))


def evaluate_models(
    models: Sequence[tuple[str, str]],
    sets: list[PromptSet],
    config: EvalConfig,
    output_dir: Path,
    *,
    template: str = "auto",
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    seed: int = 0,
    judge: Any = None,
) -> dict[str, Any]:
    """Evaluate ``models`` ([(label, name_or_path)], baseline first) on ``sets``; write results + generations.

    ``judge``: an already loaded HarmJudge (else the config's judge is loaded here when a set needs one).
    """
    from unlearnkit.evaluate.judges import load_judge

    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels) or "meta" in labels:
        raise UserError(f"model labels must be unique and not 'meta': {labels}")
    if not sets:
        raise UserError("nothing to evaluate: every prompt set is empty or disabled")
    harmful_sets = [s for s in sets if s.kind == "harmful"]
    if not harmful_sets:
        judge = None
    elif judge is None:
        judge = load_judge(config.judge, config.judge_threshold)  # before generating: fail fast on a bad judge
    settings = GenerationSettings(template=template, max_new_tokens=config.max_new_tokens, batch_size=config.eval_batch_size,
                                  do_sample=config.do_sample, temperature=config.temperature, top_p=config.top_p, seed=seed)
    outputs = [run_model(label, name, sets, settings, progress) for label, name in models]

    normal = next((s for s in sets if s.kind == "normal"), None)
    if normal is not None:
        _fluency(outputs, normal, template)
        _similarity(outputs, normal)
    verdicts: dict[tuple[str, str], list[Any]] = {}
    for o in outputs:
        for s in sets:
            responses = o.responses[s.name]
            o.scores[f"diversity_{s.name}"] = metrics.diversity(responses) if responses else math.nan
            o.scores[f"nm_rate_{s.name}"] = metrics.nm_rate(responses) if responses else math.nan
            if s.kind == "harmful" and judge is not None:
                verdicts[o.label, s.name] = judge.judge(s.questions, responses)
                o.scores[f"harmful_rate_{s.name}"] = metrics.harmful_rate([v.harmful for v in verdicts[o.label, s.name]])
            elif s.kind == "extraction" and s.answers is not None:
                leak = metrics.leak_rate(responses, s.answers)
                o.scores.update(leak_rate=leak["leak_rate"], mean_bleu=leak["mean_bleu"])
            elif s.kind == "hallucination" and s.answers is not None and s.hallucinated is not None:
                o.scores["hallucination_rate"] = metrics.hallucination_rate(responses, s.answers, s.hallucinated)
            if s.kind == "normal":
                o.scores["diversity"] = o.scores[f"diversity_{s.name}"]
                o.scores["nm_rate"] = o.scores[f"nm_rate_{s.name}"]

    results: dict[str, Any] = {
        "meta": {
            "unlearnkit_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "judge": _judge_meta(judge, config) if judge is not None else None,
            "prompt_sets": {s.name: {"source": s.source, "kind": s.kind, "n": len(s.questions)} for s in sets},
            "generation": dict(settings.__dict__),
            **(meta or {}),
        }
    }
    for o in outputs:
        results[o.label] = {"model": o.model, **{k: _clean(v) for k, v in sorted(o.scores.items())}}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    with (output_dir / "generations.jsonl").open("w") as handle:
        for o in outputs:
            for s in sets:
                judged = verdicts.get((o.label, s.name))
                for i, (prompt, response) in enumerate(zip(s.questions, o.responses[s.name])):
                    row = {"model": o.label, "prompt_set": s.name, "prompt": prompt, "response": response}
                    if judged is not None:
                        row.update(harmful=judged[i].harmful, score=judged[i].score)
                    handle.write(json.dumps(row) + "\n")
    return results


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _judge_meta(judge: Any, config: EvalConfig) -> dict[str, Any]:
    info: dict[str, Any] = {"name": config.judge, "threshold": getattr(judge, "threshold", None)}
    if config.judge == "builtin":
        info["note"] = (
            "builtin offline judge (MiniLM embeddings + logistic regression, see docs/builtin_judge.md); "
            "a stand-in, not the paper's DeBERTa reward model"
        )
    return info


def evaluate_run(
    config: Any, output_dir: Path, train_info: dict[str, Any], progress: bool = True, judge: Any = None
) -> dict[str, Any]:
    """Before/after evaluation of a finished ``unlearnkit run``: labels "before" (input model) and "after"."""
    e = config.eval
    sets = default_prompt_sets(e)
    models = [("before", config.model.name), ("after", str(output_dir / "model"))]
    meta = {"config": config.to_dict(), "train": train_info}
    return evaluate_models(models, sets, e, output_dir, template=config.data.template, meta=meta, progress=progress,
                           seed=config.train.seed, judge=judge)


def comparison_table(results: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """Plain-text table of metrics (rows) by model label (columns), with the change vs the first label."""
    labels = [k for k in results if k != "meta"]
    if keys is None:
        keys = sorted({k for label in labels for k, v in results[label].items() if k != "model" and v is not None})
    width = max(12, *(len(label) for label in labels)) + 2
    header = f"{'metric':<26}" + "".join(f"{label:>{width}}" for label in labels) + ("   change" if len(labels) > 1 else "")
    lines = [header, "-" * len(header)]
    for key in keys:
        info = metrics.metric_info(key)
        values = [results[label].get(key) for label in labels]
        cells = "".join(f"{(info.format(v) if info else ('n/a' if v is None else f'{v:.4g}')):>{width}}" for v in values)
        change = ""
        if len(values) > 1 and values[0] is not None and values[-1] is not None:
            rel = metrics.relative_change(values[0], values[-1])
            change = f"   {rel:+.0%}" if math.isfinite(rel) else f"   {rel:+}"
        lines.append(f"{key:<26}{cells}{change}")
    return "\n".join(lines)
