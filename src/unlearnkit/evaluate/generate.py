"""Batched generation (left padding) and answer scoring (NLL) with a causal LM.

Prompts go through the same formatting and token-id path as training (``unlearnkit.data``), so
what the model sees at evaluation is exactly what it saw while unlearning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from unlearnkit.data import (
    collate,
    encode_pair,
    encode_prompt,
    format_answer,
    format_prompt,
    join_prompt_answer,
    pad_id_of,
)
from unlearnkit.losses import token_nll

STOP_STRINGS = {
    # The paper template has no end marker: a base model answers, then writes the next invented turn.
    "paper": ("### Question:", "\n###", "### Answer:"),
    "chat": (),
    "plain": (),
}


@dataclass(frozen=True)
class GenerationSettings:
    template: str = "chat"
    max_new_tokens: int = 64
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_prompt_tokens: int = 256


@dataclass
class Generations:
    """Responses in prompt order; ``finished[i]`` is True when response i ended (EOS or a stop string)
    rather than running into ``max_new_tokens``."""

    responses: list[str] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the model's own generation-config list (e.g. Llama-3's
    ``<|end_of_text|>`` and ``<|eot_id|>``) merged with the tokenizer's EOS."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for candidate in ([configured] if isinstance(configured, int) else list(configured or [])) + [tokenizer.eos_token_id]:
        if candidate is not None and int(candidate) not in ids:
            ids.append(int(candidate))
    return ids


def cut_at_stop_string(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string (exclusive), and whether one was found."""
    cut = min((index for s in stop_strings if (index := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _left_pad(rows: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, longest - len(ids):] = torch.tensor(ids)
        attention_mask[i, longest - len(ids):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(
    model: Any, tokenizer: Any, questions: Sequence[str], settings: GenerationSettings, progress: bool = True, desc: str = "generating"
) -> Generations:
    """One response per question, in order. Greedy unless ``do_sample``; deterministic by seed.

    Prompts are sorted by length into batches (less padding) and results restored to input order.
    Generation stops at the model's end tokens and, for the paper template, at the next invented
    "### Question:" turn (the text is cut there).
    """
    from tqdm.auto import tqdm

    out = Generations([""] * len(questions), [False] * len(questions))
    if not questions:
        return out
    pad_id = pad_id_of(tokenizer)
    prompt_ids = [encode_prompt(tokenizer, format_prompt(tokenizer, q, settings.template))[-settings.max_prompt_tokens:] for q in questions]
    order = sorted(range(len(questions)), key=lambda i: len(prompt_ids[i]))
    device = model_device(model)
    was_training = model.training
    model.eval()
    stop_ids = stop_token_ids(model, tokenizer)
    stop_strings = STOP_STRINGS.get(settings.template, ())
    batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    for batch_number, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
        inputs = {k: v.to(device) for k, v in _left_pad([prompt_ids[i] for i in batch], pad_id).items()}
        if settings.do_sample:
            torch.manual_seed(settings.seed * 100_003 + batch_number)
        extra = {"stop_strings": list(stop_strings), "tokenizer": tokenizer} if stop_strings else {}
        output = model.generate(
            **inputs, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
            temperature=settings.temperature if settings.do_sample else None,
            top_p=settings.top_p if settings.do_sample else None, top_k=None,
            pad_token_id=pad_id, eos_token_id=stop_ids or None, **extra,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
        for i, ids in zip(batch, new_tokens):
            ended = any(token in stop_ids for token in ids)
            if ended:  # drop the end token and the padding after it
                ids = ids[: next(k for k, token in enumerate(ids) if token in stop_ids)]
            text, stopped = cut_at_stop_string(tokenizer.decode(ids, skip_special_tokens=True), stop_strings)
            out.responses[i], out.finished[i] = text.strip(), ended or stopped
    model.train(was_training)
    return out


def generate_responses(
    model: Any, tokenizer: Any, questions: Sequence[str], settings: GenerationSettings, progress: bool = True, desc: str = "generating"
) -> list[str]:
    """The responses of ``generate`` only."""
    return generate(model, tokenizer, questions, settings, progress, desc).responses


@dataclass
class AnswerScores:
    """Per answer: summed NLL over its scored tokens and their count (answer tokens, plus EOS where asked)."""

    nll_sums: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def mean_nll(self) -> list[float]:
        """Per-answer mean token NLL (0 for an answer with no scored token, as in training)."""
        return [s / n if n else 0.0 for s, n in zip(self.nll_sums, self.counts)]


@torch.no_grad()
def score_answers(
    model: Any, tokenizer: Any, questions: Sequence[str], answers: Sequence[str], template: str,
    max_length: int = 256, batch_size: int = 16, add_eos: bool | Sequence[bool] = True,
) -> AnswerScores:
    """Summed NLL and token count of each answer given its question, tokenized exactly as in training.

    ``max_length`` truncates like training (prompt cut from the left first). ``add_eos`` (one flag,
    or one per answer) appends EOS to the scored answer: True for reference answers; for a model's
    own outputs, True only where the model really stopped, so a cut-off output is not scored with an
    end it never produced. For corpus perplexity take exp(sum of NLL / sum of tokens).
    """
    pad_id = pad_id_of(tokenizer)
    eos_flags = [add_eos] * len(answers) if isinstance(add_eos, bool) else list(add_eos)
    sequences = []
    for question, answer, eos in zip(questions, answers, eos_flags):
        prompt = format_prompt(tokenizer, question, template)
        prompt_ids, answer_ids = encode_pair(tokenizer, prompt, format_answer(answer, template, prompt) if answer else "", eos=eos)
        sequences.append(join_prompt_answer(prompt_ids, answer_ids, max_length, tokenizer.bos_token_id))
    device = model_device(model)
    was_training = model.training
    model.eval()
    nll_sums, counts = [0.0] * len(sequences), [0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([sequences[i] for i in rows], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, valid = token_nll(logits, batch["labels"])
        for i, total, count in zip(rows, nll.sum(dim=1).tolist(), valid.sum(dim=1).tolist()):
            nll_sums[i], counts[i] = total, int(count)
    model.train(was_training)
    return AnswerScores(nll_sums, counts)
