"""The evaluation runner: generate on every prompt set with every model, then score.

Prompt sets have a kind that decides their metrics (``<metric>_<set>`` in results.json):

- harmful (forget, heldout, --prompts files): harmful_rate by the judge, refusal_rate, and
  forget_nll (mean per-example answer NLL, tokenized and truncated exactly as trained) when the
  set has answers;
- benign (instructions never trained on) and overrefusal (safe prompts that look unsafe): utility:
  similarity_to_original, relevance, on_topic_rate, refusal_rate; answer_ppl on reference answers;
- normal (reference Q&A): normal_ppl, similarity_to_original;
- extraction (copyright): leak_rate and mean_bleu of continuations against the true text, and
  OpenUnlearning's exact_memorization / extraction_strength of the true continuation (teacher-forced:
  share of its tokens the greedy next token gets right / longest suffix completed; see evaluate/mia.py);
- hallucination: hallucination_rate and right_answer_rate.
Every set also gets nm_rate, distinct1, distinct2, mean_length and fluency_ppl (the outputs'
perplexity under the original model). Every per-item metric carries a 95% bootstrap interval in
``results[label]["ci"]``. The first model is the baseline ("original"): it is loaded once and kept
for scoring the other models' fluency. Writes results.json and generations.jsonl.

Eval sets follow the run: ``eval_forget=trained`` is exactly the trained forget data, held-out sets
must not share a prompt with it (an error), and a set that shares prompts or its source with the
training normal data is marked ``in_distribution`` (its utility figures are not "never trained on").
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from unlearnkit import __version__
from unlearnkit.config import TRAINED, EvalConfig, ModelConfig, RunConfig
from unlearnkit.data import QAExample, load_qa, load_rows, read_table, source_parts, text_cell
from unlearnkit.errors import UserError
from unlearnkit.evaluate import metrics
from unlearnkit.evaluate.generate import GenerationSettings, Generations, generate, score_answers

UTILITY_KINDS = ("benign", "overrefusal", "normal")
SCORE_MAX_LENGTH = 512  # answer-scoring truncation for sets that were not trained on


@dataclass
class PromptSet:
    name: str
    kind: str  # harmful | benign | overrefusal | normal | extraction | hallucination
    source: str
    questions: list[str]
    answers: list[str] | None = None  # reference answers / forget answers / true continuations / right answers
    hallucinated: list[str] | None = None
    template: str | None = None  # None: the evaluation's template
    score_max_length: int = SCORE_MAX_LENGTH
    in_distribution: bool = False
    note: str = ""
    judged: list[str] | None = None  # the requests the judge reads (None: the questions); attacks wrap the questions
    # Hallucination sets whose prompt carries a knowledge passage (halueval_grounded_*): the bare questions. The
    # closeness metric ignores the question's words; ignoring the passage's would drop the right answer itself.
    plain_questions: list[str] | None = None

    def select(self, positions: Sequence[int], **changes: Any) -> PromptSet:
        """The prompts at ``positions`` (a subset, or repeats), every per-prompt list taken alike, then ``changes``."""
        from dataclasses import replace

        picked = {f: None if getattr(self, f) is None else [getattr(self, f)[i] for i in positions] for f in PER_PROMPT_FIELDS}
        return replace(self, **{**picked, **changes})


# The PromptSet fields that hold one item per prompt (select keeps them aligned).
PER_PROMPT_FIELDS = ("questions", "answers", "hallucinated", "judged", "plain_questions")


def normalized(text: str) -> str:
    """Case- and whitespace-insensitive form of a prompt, for overlap checks."""
    return " ".join(text.lower().split())


def dataset_family(source: str) -> str:
    """Datasets of one family share a distribution: a builtin family, a hub dataset's name, a file's path."""
    from unlearnkit.builtin.datasets import BUILTIN_DATASETS

    if source in BUILTIN_DATASETS:
        return "builtin:" + BUILTIN_DATASETS[source].family
    if source.startswith("hf:") or ("/" in source and not Path(source).expanduser().exists()):
        return "hub:" + source.removeprefix("hf:").partition(":")[0]
    return "file:" + str(Path(source).expanduser().resolve())


def _limit(items: list, n: int) -> list:
    return items[:n] if n else items


def qa_set(name: str, kind: str, source: str, limit: int, template: str | None = None) -> PromptSet:
    """A set of question/answer rows (default columns); the answers are references to score."""
    examples = _limit(load_qa(source), limit)
    return PromptSet(name, kind, source, [e.question for e in examples], [e.answer for e in examples], template=template)


def prompt_only_set(name: str, kind: str, source: str, limit: int) -> PromptSet:
    """A set of prompts (``question`` column); answers are used when every row has one."""
    rows = _limit(load_rows(source), limit)
    questions, answers = [], []
    for number, row in enumerate(rows, 1):
        if "question" not in row:
            raise UserError(f"{source}: row {number} has no 'question' text; prompt sets need a question column")
        question = text_cell(row, "question", source, number).strip()
        if not question:
            raise UserError(f"{source}: row {number} has no 'question' text; prompt sets need a question column")
        questions.append(question)
        answers.append((text_cell(row, "answer", source, number, allow_null=True) or "").strip())
    return PromptSet(name, kind, source, questions, answers if all(answers) else None)


def hallucination_set(source: str, limit: int) -> PromptSet:
    rows = _limit(load_rows(source), limit)
    for number, row in enumerate(rows, 1):
        missing = {"question", "answer", "right_answer"} - row.keys()
        if missing:
            raise UserError(f"{source}: row {number} lacks {', '.join(sorted(missing))}; hallucination sets need question, answer (hallucinated), right_answer")
    cells = [[text_cell(row, column, source, number) for column in ("question", "right_answer", "answer")]
             for number, row in enumerate(rows, 1)]
    plain = ([text_cell(row, "plain_question", source, number) for number, row in enumerate(rows, 1)]
             if rows and all("plain_question" in row for row in rows) else None)
    return PromptSet("hallucination", "hallucination", source, [c[0] for c in cells], [c[1] for c in cells], [c[2] for c in cells],
                     plain_questions=plain)


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
        text = text_cell(row, "prompt", path, number).strip() if "prompt" in row else ""
        if not text:
            raise UserError(f"{path}: row {number} has no 'prompt' field (or it is empty); each row needs a non-empty \"prompt\"")
        prompts.append(text)
    return PromptSet(name, "harmful", str(path), prompts)


def trained_forget_data(config: RunConfig) -> list[QAExample]:
    """The forget examples exactly as training loads them (source, split, columns, filter, limit)."""
    d = config.data
    return load_qa(d.forget, split=d.forget_split, question_column=d.forget_question_column,
                   answer_column=d.forget_answer_column, limit=d.max_forget, where=d.forget_where)


def _trained_set(name: str, kind: str, config: RunConfig, examples: list[QAExample], limit: int) -> PromptSet:
    examples = _limit(examples, limit)
    return PromptSet(name, kind, config.data.forget, [e.question for e in examples], [e.answer for e in examples],
                     template=config.data.template if kind == "harmful" else "plain" if kind == "extraction" else None,
                     score_max_length=config.data.max_length, note="the trained forget data")


def _check_disjoint(held_out: PromptSet, forget: list[QAExample]) -> None:
    trained = {normalized(e.question) for e in forget}
    overlap = sum(normalized(q) in trained for q in held_out.questions)
    if overlap:
        raise UserError(
            f"held-out set '{held_out.name}' ({held_out.source}) shares {overlap} of {len(held_out.questions)} prompts with the "
            "trained forget data; choose a held-out set disjoint from it (or eval_" + held_out.name + "='' to skip it)"
        )


def _mark_in_distribution(prompt_set: PromptSet, config: RunConfig, normal_prompts: set[str] | None) -> None:
    d = config.data
    # Each part of a joined source (normal=alpaca_instructions+toxicchat_benign) is a training source of its own.
    families = {dataset_family(part): role for role, source in (("forget", d.forget), ("normal", d.normal))
                for part in source_parts(source)}
    shared = families.get(dataset_family(prompt_set.source))
    overlap = sum(normalized(q) in normal_prompts for q in prompt_set.questions) if normal_prompts else 0
    if shared or overlap:
        prompt_set.in_distribution = True
        reasons = ([f"same source as the training {shared} data ({d.normal if shared == 'normal' else d.forget})"] if shared else [])
        reasons += [f"{overlap} prompts also in the training normal data"] if overlap else []
        prompt_set.note = "in-distribution: " + "; ".join(reasons)


def _normal_prompts(config: RunConfig) -> set[str] | None:
    """Prompts of the training normal data (None when it cannot be read here, e.g. a hub set offline)."""
    d = config.data
    try:
        return {normalized(e.question) for e in load_qa(d.normal, split=d.normal_split, question_column=d.normal_question_column,
                                                          answer_column=d.normal_answer_column, limit=d.max_normal, where=d.normal_where,
                                                          need_answers=False)}
    except UserError:
        return None


def default_prompt_sets(config: RunConfig) -> list[PromptSet]:
    """The sets named by the eval config, following the run's data (an empty source leaves a set out).

    Raises UserError when a held-out set shares prompts with the trained forget data.
    """
    e, n = config.eval, config.eval.eval_max_prompts
    needs_forget = TRAINED in (e.eval_forget, e.eval_extraction) or bool(e.eval_heldout or e.eval_hallucination)
    forget = trained_forget_data(config) if needs_forget else []
    sets: list[PromptSet] = []
    if e.eval_forget:
        sets.append(_trained_set("forget", "harmful", config, forget, n) if e.eval_forget == TRAINED
                    else qa_set("forget", "harmful", e.eval_forget, n))
    if e.eval_heldout:
        heldout = prompt_only_set("heldout", "harmful", e.eval_heldout, n)
        _check_disjoint(heldout, forget)
        sets.append(heldout)
    for name, kind, source in (("benign", "benign", e.eval_benign), ("benign2", "benign", e.eval_benign2),
                               ("overrefusal", "overrefusal", e.eval_overrefusal)):
        if source:
            sets.append(prompt_only_set(name, kind, source, n))
    if e.eval_normal:
        sets.append(qa_set("normal", "normal", e.eval_normal, n))
    if e.eval_extraction:
        sets.append(_trained_set("extraction", "extraction", config, forget, n) if e.eval_extraction == TRAINED
                    else qa_set("extraction", "extraction", e.eval_extraction, n, template="plain"))
    if e.eval_hallucination:
        halluc = hallucination_set(e.eval_hallucination, n)
        _check_disjoint(halluc, forget)
        sets.append(halluc)
    utility = [s for s in sets if s.kind in UTILITY_KINDS]
    if utility:
        normal_prompts = _normal_prompts(config)
        for prompt_set in utility:
            _mark_in_distribution(prompt_set, config, normal_prompts)
    return sets


# ------------------------------------------------------------------------------------------- models
def resolve_device(config: EvalConfig) -> tuple[str, Any]:
    """(device, torch dtype) for evaluation: auto = cuda with bf16 when available, else cpu with fp32."""
    import torch

    device = config.eval_device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"eval_device={config.eval_device} but CUDA is not available here; use eval_device=cpu or auto")
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = names.get(config.eval_dtype) or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    return device, dtype


def _load(model_config: ModelConfig, device: str, dtype: Any) -> tuple[Any, Any]:
    from unlearnkit.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_config)
    model = load_model(model_config, dtype=dtype).to(device)
    model.eval()
    return model, tokenizer


def _resolve_template(template: str, tokenizer: Any) -> str:
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "paper"
    return template


@dataclass
class ModelOutputs:
    label: str
    model: str
    generations: dict[str, Generations] = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    item_notes: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # set -> column -> per-item values

    def responses(self, set_name: str) -> list[str]:
        return self.generations[set_name].responses

    def record(self, key: str, per_item: Sequence[float] | np.ndarray,
               statistic: Callable[[np.ndarray], float] | None = None, seed: int = 0) -> None:
        """Store a metric from its per-item values, with its 95% bootstrap interval."""
        values = np.asarray(per_item, dtype=float)
        if len(values) == 0:
            self.scores[key] = None
            return
        stat = statistic or (lambda rows: float(np.mean(rows)))
        self.scores[key] = stat(values)
        self.intervals[key] = metrics.bootstrap_ci(values, stat, seed=seed)

    def note(self, set_name: str, column: str, values: Sequence[Any]) -> None:
        self.item_notes.setdefault(set_name, {})[column] = list(values)


def _perplexity_rows(nll_sums: Sequence[float], counts: Sequence[int]) -> np.ndarray:
    return np.column_stack([np.asarray(nll_sums, dtype=float), np.asarray(counts, dtype=float)])


def _score_own(out: ModelOutputs, model: Any, tokenizer: Any, sets: list[PromptSet], template: str, seed: int) -> None:
    """Scores that need this model's own weights: answer NLL / perplexity on reference answers."""
    for s in sets:
        if s.answers is None or s.kind not in ("harmful", "extraction", "normal", "benign"):
            continue
        if s.kind == "extraction":  # one pass gives the NLL and the memorization figures (same tokens as score_answers)
            from unlearnkit.evaluate import mia

            stats = mia.answer_token_stats(model, tokenizer, s.questions, s.answers, s.template or template,
                                           max_length=s.score_max_length, batch_size=4)  # [tokens, vocab] terms: small batches
            out.record(f"forget_nll_{s.name}", [-float(t.log_probs.mean()) for t in stats], seed=seed)
            for key, values in mia.memorization_scores(stats).items():
                out.record(f"{key}_{s.name}", values, seed=seed)
            continue
        scored = score_answers(model, tokenizer, s.questions, s.answers, s.template or template, max_length=s.score_max_length)
        if s.kind == "harmful":  # as trained: mean over examples of the per-example mean token NLL
            out.record(f"forget_nll_{s.name}", scored.mean_nll(), seed=seed)
        else:
            key = "normal_ppl" if s.kind == "normal" else f"answer_ppl_{s.name}"
            out.record(key, _perplexity_rows(scored.nll_sums, scored.counts), metrics.perplexity_of_rows, seed=seed)


def _score_fluency(outputs: list[ModelOutputs], baseline: Any, tokenizer: Any, sets: list[PromptSet], template: str, seed: int) -> None:
    """fluency_ppl_<set>: perplexity of each model's outputs under the baseline, as generated."""
    for s in sets:
        if s.kind == "extraction":
            continue
        for o in outputs:
            gens = o.generations[s.name]
            scored = score_answers(baseline, tokenizer, s.questions, gens.responses, s.template or template,
                                   max_length=SCORE_MAX_LENGTH, add_eos=gens.finished)
            o.record(f"fluency_ppl_{s.name}", _perplexity_rows(scored.nll_sums, scored.counts), metrics.perplexity_of_rows, seed=seed)


def _score_embeddings(outputs: list[ModelOutputs], sets: list[PromptSet], device: str, seed: int,
                      also_similar_to: str | None = None) -> None:
    """similarity_to_original, relevance and on_topic_rate on the utility sets (MiniLM embeddings); with
    ``also_similar_to`` (a model's label), every model's similarity to that model's answers too
    (``similarity_to_<label>_<set>``: the copyright scenario compares with the memorized model, the one the user had)."""
    from unlearnkit.evaluate.judges import minilm_embed

    for s in sets:
        if s.kind not in UTILITY_KINDS:
            continue
        prompts = minilm_embed(s.questions, device=device)
        base = minilm_embed(outputs[0].responses(s.name), device=device)
        base_relevance = metrics.cosine_similarity_rows(prompts, base)
        embedded = {o.label: base if o is outputs[0] else minilm_embed(o.responses(s.name), device=device) for o in outputs}
        for o in outputs:
            similarity = metrics.cosine_similarity_rows(base, embedded[o.label])
            relevance = metrics.cosine_similarity_rows(prompts, embedded[o.label])
            on_topic = metrics.on_topic_flags(relevance, base_relevance)
            o.record(f"similarity_to_original_{s.name}", similarity, seed=seed)
            if also_similar_to:
                o.record(f"similarity_to_{also_similar_to}_{s.name}",
                         metrics.cosine_similarity_rows(embedded[also_similar_to], embedded[o.label]), seed=seed)
            o.record(f"relevance_{s.name}", relevance, seed=seed)
            o.record(f"on_topic_rate_{s.name}", on_topic, seed=seed)
            o.note(s.name, "similarity", np.round(similarity, 4).tolist())
            o.note(s.name, "on_topic", [bool(x) for x in on_topic])


def _score_texts(outputs: list[ModelOutputs], sets: list[PromptSet], judge: Any, seed: int) -> None:
    """Judge verdicts, refusals, NM, distinct-n, leak and hallucination rates (text only)."""
    for o in outputs:
        for s in sets:
            responses = o.responses(s.name)
            nm = [metrics.is_not_meaningful(r) for r in responses]
            o.record(f"nm_rate_{s.name}", nm, seed=seed)
            o.scores[f"distinct1_{s.name}"] = metrics.distinct_n(responses, 1)
            o.scores[f"distinct2_{s.name}"] = metrics.distinct_n(responses, 2)
            o.record(f"mean_length_{s.name}", [len(r.split()) for r in responses], seed=seed)
            o.note(s.name, "not_meaningful", nm)
            if s.kind in ("harmful", "benign", "overrefusal"):
                refusals = [metrics.is_refusal(r) for r in responses]
                o.record(f"refusal_rate_{s.name}", refusals, seed=seed)
                o.note(s.name, "refusal", refusals)
            if s.kind == "harmful" and judge is not None:
                verdicts = judge.judge(s.judged or s.questions, responses)
                o.record(f"harmful_rate_{s.name}", [v.harmful for v in verdicts], seed=seed)
                o.note(s.name, "harmful", [bool(v.harmful) for v in verdicts])
                o.note(s.name, "score", [round(float(v.score), 4) for v in verdicts])
            elif s.kind == "extraction" and s.answers is not None:
                bleu = metrics.bleu_scores(responses, s.answers)
                o.record(f"leak_rate_{s.name}", bleu >= metrics.LEAK_BLEU_THRESHOLD, seed=seed)
                o.record(f"mean_bleu_{s.name}", bleu, seed=seed)
                o.note(s.name, "bleu", np.round(bleu, 2).tolist())
            elif s.kind == "hallucination" and s.answers is not None and s.hallucinated is not None:
                side = metrics.answer_closeness_all(responses, s.answers, s.hallucinated, s.plain_questions or s.questions)
                o.record(f"hallucination_rate_{s.name}", side == metrics.HALLUCINATED, seed=seed)
                o.record(f"right_answer_rate_{s.name}", side == metrics.RIGHT, seed=seed)
                o.note(s.name, "closeness", side.tolist())


def evaluate_models(
    models: Sequence[tuple[str, ModelConfig | str]],
    sets: list[PromptSet],
    config: EvalConfig,
    output_dir: Path,
    *,
    template: str = "auto",
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    seed: int = 0,
    judge: Any = None,
    transform: Callable[[Any], Any] | None = None,
    fluency: bool = True,
    answer_scores: bool = True,
    reuse_generations: dict[str, dict[str, Generations]] | None = None,
    also_similar_to: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``models`` ([(label, ModelConfig or name)], baseline first) on ``sets``; write results + generations.

    ``judge``: an already loaded HarmJudge (else the config's judge is loaded here when a set needs one).
    ``transform``: applied to every model once loaded, before anything is generated or scored (the
    weight attacks quantize the models here); returns the model to use. ``fluency=False`` leaves out
    fluency_ppl (a scoring pass per set that the attacks, reading only forgetting rates, do not need);
    ``answer_scores=False`` leaves out the reference-answer NLLs (forget_nll, answer/normal perplexity), a
    scoring pass per model that costs about as much as generating (attacks and the frontier skip both).
    ``reuse_generations``: {label: {set name: Generations}} generated before with the same settings (e.g. the
    baseline's, cached by a benchmark that evaluates many models against one original): those sets are not
    generated again; everything is still scored. ``also_similar_to``: a label of ``models`` whose answers every
    model's utility answers are also compared with (``similarity_to_<label>_<set>``).
    """
    from unlearnkit.evaluate.judges import load_judge

    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels) or "meta" in labels:
        raise UserError(f"model labels must be unique and not 'meta': {labels}")
    if also_similar_to is not None and also_similar_to not in labels:
        raise UserError(f"also_similar_to='{also_similar_to}' is not one of the models' labels: {labels}")
    if not sets:
        raise UserError("nothing to evaluate: every prompt set is empty or disabled")
    configs = [(label, m if isinstance(m, ModelConfig) else ModelConfig(name=m)) for label, m in models]
    device, dtype = resolve_device(config)
    if not any(s.kind == "harmful" for s in sets):
        judge = None
    elif judge is None:
        judge = load_judge(config.judge, config.judge_threshold)  # before generating: fail fast on a bad judge
    settings = GenerationSettings(template=template, max_new_tokens=config.max_new_tokens, batch_size=config.eval_batch_size,
                                  do_sample=config.do_sample, temperature=config.temperature, top_p=config.top_p, seed=seed)

    outputs: list[ModelOutputs] = []
    baseline, baseline_tokenizer = _load(configs[0][1], device, dtype)
    if transform is not None:
        baseline = transform(baseline)
    resolved_template = _resolve_template(template, baseline_tokenizer)
    for label, model_config in configs:
        model, tokenizer = (baseline, baseline_tokenizer) if not outputs else _load(model_config, device, dtype)
        if transform is not None and model is not baseline:
            model = transform(model)
        out = ModelOutputs(label, model_config.name)
        reused = (reuse_generations or {}).get(label, {})
        pending: dict[str, list[PromptSet]] = {}  # template -> sets to generate
        for s in sets:
            if s.name in reused and len(reused[s.name].responses) == len(s.questions):
                out.generations[s.name] = reused[s.name]
            else:
                pending.setdefault(s.template or resolved_template, []).append(s)
        for set_template, group in pending.items():
            # One generate call for all sets of a template: decoding a small model on CPU is bound by per-step
            # overhead, so fuller batches (sorted by length across sets) cost little more per step than small ones.
            set_settings = GenerationSettings(**{**settings.__dict__, "template": set_template})
            generated = generate(model, tokenizer, [q for s in group for q in s.questions], set_settings, progress=progress,
                                 desc=f"{label}: {', '.join(s.name for s in group)}")
            start = 0
            for s in group:
                stop = start + len(s.questions)
                out.generations[s.name] = Generations(generated.responses[start:stop], generated.finished[start:stop])
                start = stop
        if answer_scores:
            _score_own(out, model, tokenizer, sets, resolved_template, seed)
        outputs.append(out)
        if model is not baseline:
            del model
            gc.collect()
    if fluency:
        _score_fluency(outputs, baseline, baseline_tokenizer, sets, resolved_template, seed)
    del baseline
    gc.collect()
    _score_embeddings(outputs, sets, device, seed, also_similar_to)
    _score_texts(outputs, sets, judge, seed)

    results: dict[str, Any] = {
        "meta": {
            "unlearnkit_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "judge": judge_meta(judge, config) if judge is not None else None,
            "prompt_sets": {s.name: {"source": s.source, "kind": s.kind, "n": len(s.questions),
                                     "in_distribution": s.in_distribution, **({"note": s.note} if s.note else {})} for s in sets},
            "generation": {**settings.__dict__, "template": resolved_template, "device": device, "dtype": str(dtype).removeprefix("torch.")},
            "confidence": "95% percentile bootstrap over prompts (results[label]['ci'])",
            **(meta or {}),
        }
    }
    for o in outputs:
        results[o.label] = {"model": o.model, **{k: _clean(v) for k, v in sorted(o.scores.items())},
                            "ci": {k: [round(lo, 6), round(hi, 6)] for k, (lo, hi) in sorted(o.intervals.items())
                                   if math.isfinite(lo) and math.isfinite(hi)}}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    _write_generations(output_dir / "generations.jsonl", outputs, sets)
    return results


def _write_generations(path: Path, outputs: list[ModelOutputs], sets: list[PromptSet]) -> None:
    with path.open("w") as handle:
        for o in outputs:
            for s in sets:
                gens, notes = o.generations[s.name], o.item_notes.get(s.name, {})
                for i, prompt in enumerate(s.questions):
                    row = {"model": o.label, "prompt_set": s.name, "prompt": prompt, "response": gens.responses[i],
                           "finished": gens.finished[i], **{column: values[i] for column, values in notes.items()}}
                    handle.write(json.dumps(row) + "\n")


def _clean(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def judge_meta(judge: Any, config: EvalConfig) -> dict[str, Any]:
    """What results.json records of the harm judge: name, threshold and, for the builtin judge, its held-out accuracy."""
    info: dict[str, Any] = {"name": config.judge, "threshold": getattr(judge, "threshold", None)}
    if config.judge == "builtin":
        info["note"] = "builtin offline judge (see docs/builtin_judge.md for its measured accuracy); not the paper's DeBERTa reward model"
        quality = getattr(judge, "held_out_metrics", None)
        if quality:
            info["held_out_metrics"] = quality
    return info


def judge_accuracy_range(judge: Any) -> tuple[float, float] | None:
    """(lowest, highest) held-out balanced accuracy of the harm judge over its sources, from results' meta."""
    quality = judge.get("held_out_metrics") if isinstance(judge, dict) else None
    sources = quality.get("sources") if isinstance(quality, dict) else None
    values = [float(row["balanced_accuracy"]) for row in (sources or {}).values()
              if isinstance(row, dict) and isinstance(row.get("balanced_accuracy"), (int, float))]
    return (min(values), max(values)) if values else None


def judge_error_bar(judge: Any) -> str:
    """One line: the harm judge's own held-out accuracy, the error bar of every harmful rate ("" without a judge).

    A harmful rate is the share of outputs the judge flags; a judge with balanced accuracy 0.61 on a source
    misreads many of them, so the rate cannot be read more precisely than the judge. Judges with no recorded
    held-out accuracy (a hub classifier) say so instead of staying silent."""
    if not isinstance(judge, dict):
        return ""
    name = judge.get("name") or "unnamed"
    span = judge_accuracy_range(judge)
    if span is None:
        return (f"Harmful rates are the verdicts of judge '{name}', whose accuracy on held-out labels is not recorded: "
                "no error bar is known for them.")
    quality = judge["held_out_metrics"]
    parts = []
    for source, row in quality["sources"].items():
        rates = ", ".join(f"{k} {row[k]:.2f}" for k in ("tpr", "tnr") if isinstance(row.get(k), (int, float)))
        parts.append(f"{source} {row['balanced_accuracy']:.2f}" + (f" ({rates})" if rates else ""))
    protocol = quality.get("protocol") or "held out"
    return (f"Harmful rates are the verdicts of judge '{name}', whose own balanced accuracy on held-out labels is "
            f"{span[0]:.2f}-{span[1]:.2f} ({protocol}: {'; '.join(parts)}): read every harmful rate with that error.")


def evaluate_run(
    config: RunConfig, output_dir: Path, train_info: dict[str, Any], progress: bool = True, judge: Any = None
) -> dict[str, Any]:
    """Before/after evaluation of a finished ``unlearnkit run``: labels "before" (input model) and "after"."""
    sets = default_prompt_sets(config)
    after = ModelConfig(name=str(output_dir / "model"), trust_remote_code=config.model.trust_remote_code)
    models = [("before", config.model), ("after", after)]
    meta = {"config": config.to_dict(), "train": train_info}
    return evaluate_models(models, sets, config.eval, output_dir, template=eval_template(config), meta=meta, progress=progress,
                           seed=config.train.seed, judge=judge)


def eval_template(config: RunConfig) -> str:
    """The evaluation's prompt format: the training template, except that raw-text training (copyright
    passages) evaluates the other sets in the model's own chat format ("auto"); extraction prompts stay raw."""
    return "auto" if config.data.template == "plain" else config.data.template


def format_value(key: str, value: float | None, interval: Sequence[float] | None = None) -> str:
    """A metric value as printed in tables, with its interval when there is one: '57.5% [42.5-72.5]'."""
    info = metrics.metric_info(key)
    text = info.format(value) if info else ("n/a" if value is None else f"{value:.4g}")
    if interval is None or value is None:
        return text
    low, high = (info.format(x) if info else f"{x:.3g}" for x in interval)
    return f"{text} [{low.rstrip('%')}-{high}]" if text.endswith("%") else f"{text} [{low}-{high}]"


def comparison_table(results: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """Plain-text table of metrics (rows) by model label (columns) with 95% intervals, and the change vs the first label."""
    labels = [k for k in results if k != "meta"]
    if keys is None:
        keys = sorted({k for label in labels for k, v in results[label].items() if k not in ("model", "ci") and v is not None})
    cells = {key: [format_value(key, results[label].get(key), results[label].get("ci", {}).get(key)) for label in labels]
             for key in keys}
    width = max(12, *(len(label) for label in labels), *(len(c) for row in cells.values() for c in row)) + 2
    key_width = max(26, *(len(k) + 2 for k in keys))
    header = f"{'metric':<{key_width}}" + "".join(f"{label:>{width}}" for label in labels) + ("   change" if len(labels) > 1 else "")
    lines = [header, "-" * len(header)]
    for key in keys:
        values = [results[label].get(key) for label in labels]
        change = change_text(key, values[0], values[-1]) if len(values) > 1 else ""
        lines.append(f"{key:<{key_width}}" + "".join(f"{c:>{width}}" for c in cells[key]) + (f"   {change}" if change else ""))
    if any(key.startswith("harmful_rate") for key in keys):  # the error bar the intervals above do not include
        judge = results.get("meta", {}).get("judge")
        if note := judge_error_bar(judge):
            lines += ["", f"judge: {note}"]
    return "\n".join(lines)


def change_text(key: str, before: float | None, after: float | None) -> str:
    """The change from ``before`` to ``after``: points for rates (+12.5 pts), relative otherwise (+31%)."""
    if before is None or after is None:
        return ""
    info = metrics.metric_info(key)
    if info is not None and info.fmt.endswith("%}"):
        return f"{(after - before) * 100:+.1f} pts"
    rel = metrics.relative_change(before, after)
    return f"{rel:+.0%}" if math.isfinite(rel) else f"{rel:+}"
