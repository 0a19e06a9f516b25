"""Batched generation (left padding) and answer scoring (summed NLL) with a causal LM.

Prompts go through the same formatting and token-id path as training (``unlearnkit.data``), so
what the model sees at evaluation is exactly what it saw while unlearning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from unlearnkit.data import (
    collate,
    encode_answer,
    encode_prompt,
    format_answer,
    format_prompt,
    join_prompt_answer,
    pad_id_of,
)
from unlearnkit.losses import answer_nll_sum


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


def _left_pad(rows: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, longest - len(ids):] = torch.tensor(ids)
        attention_mask[i, longest - len(ids):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def generate_responses(
    model: Any, tokenizer: Any, questions: Sequence[str], settings: GenerationSettings, progress: bool = True, desc: str = "generating"
) -> list[str]:
    """One response per question, in order. Greedy unless ``do_sample``; deterministic by seed.

    Prompts are sorted by length into batches (less padding) and results restored to input order.
    """
    from tqdm.auto import tqdm

    if not questions:
        return []
    pad_id = pad_id_of(tokenizer)
    prompt_ids = [encode_prompt(tokenizer, format_prompt(tokenizer, q, settings.template))[-settings.max_prompt_tokens:] for q in questions]
    order = sorted(range(len(questions)), key=lambda i: len(prompt_ids[i]))
    responses: list[str] = [""] * len(questions)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else None
    batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    for batch_number, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
        inputs = {k: v.to(device) for k, v in _left_pad([prompt_ids[i] for i in batch], pad_id).items()}
        if settings.do_sample:
            torch.manual_seed(settings.seed * 100_003 + batch_number)
        output = model.generate(
            **inputs, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
            temperature=settings.temperature if settings.do_sample else None,
            top_p=settings.top_p if settings.do_sample else None, top_k=None,
            pad_token_id=pad_id, eos_token_id=stop_ids,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        for i, ids in zip(batch, new_tokens):
            responses[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    model.train(was_training)
    return responses


@torch.no_grad()
def score_answers(
    model: Any, tokenizer: Any, questions: Sequence[str], answers: Sequence[str], template: str,
    max_length: int = 256, batch_size: int = 16,
) -> tuple[list[float], list[int]]:
    """Summed NLL and token count of each answer given its question (answer tokens + EOS only).

    For corpus perplexity take exp(sum of NLL / sum of tokens) over all answers.
    """
    pad_id = pad_id_of(tokenizer)
    sequences = []
    for question, answer in zip(questions, answers):
        prompt = format_prompt(tokenizer, question, template)
        answer_ids = encode_answer(tokenizer, format_answer(answer, template, prompt))
        sequences.append(join_prompt_answer(encode_prompt(tokenizer, prompt), answer_ids, max_length, tokenizer.bos_token_id))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll_sums: list[float] = []
    counts: list[int] = []
    for start in range(0, len(sequences), batch_size):
        batch = {k: v.to(device) for k, v in collate(sequences[start:start + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sums, n = answer_nll_sum(logits, batch["labels"])
        nll_sums.extend(sums.tolist())
        counts.extend(int(c) for c in n.tolist())
    model.train(was_training)
    return nll_sums, counts
