#!/usr/bin/env python3
"""Calibrate ``metrics.ON_TOPIC_RATIO``: when does an answer count as staying on topic?

An answer is on topic when relevance(answer) >= ratio * relevance(original's answer), relevance
being the cosine of the MiniLM embeddings of answer and prompt. The builtin model answers the
Self-Instruct prompts (greedy, chat template, as the evaluation does); then, for each candidate ratio:

- answers that ARE on topic but differ from the original's: the human reference answers, and the
  original's own answers (trivially on topic) -> should be kept;
- answers that are NOT on topic: the original's answers moved to another prompt (a random
  derangement, 5 seeds), and TruthfulQA best answers given to the Self-Instruct prompts (the voice
  the demo used to drift into) -> should be flagged.

Prints a table of kept/flagged shares per ratio. Usage:
    PYTHONPATH=src python scripts/calibrate_on_topic.py [--limit 175] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=175)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    from unlearnkit.config import ModelConfig
    from unlearnkit.data import load_qa, load_rows
    from unlearnkit.evaluate.generate import GenerationSettings, generate
    from unlearnkit.evaluate.judges import minilm_embed
    from unlearnkit.evaluate.metrics import cosine_similarity_rows
    from unlearnkit.modeling import load_model, load_tokenizer

    rows = load_rows("selfinstruct_benign")[: args.limit]
    prompts, references = [r["question"] for r in rows], [r["answer"] for r in rows]
    tokenizer, model = load_tokenizer(ModelConfig()), load_model(ModelConfig()).eval()
    answers = generate(model, tokenizer, prompts, GenerationSettings(template="chat", max_new_tokens=args.max_new_tokens,
                                                                      batch_size=32)).responses
    truthful = [e.answer for e in load_qa("truthfulqa_test")]
    e_prompt, e_answer, e_reference = minilm_embed(prompts), minilm_embed(answers), minilm_embed(references)
    e_truthful = minilm_embed([truthful[i % len(truthful)] for i in range(len(prompts))])
    own = cosine_similarity_rows(e_prompt, e_answer)
    n = len(prompts)
    moved = []
    for seed in range(5):
        shift = np.random.default_rng(seed).permutation(n)
        shift = np.where(shift == np.arange(n), (shift + 1) % n, shift)  # no answer stays on its own prompt
        moved.append(cosine_similarity_rows(e_prompt, e_answer[shift]))
    cases = {
        "reference answers (keep)": cosine_similarity_rows(e_prompt, e_reference),
        "original's answers moved to other prompts (flag)": np.concatenate(moved),
        "TruthfulQA answers to these prompts (flag)": cosine_similarity_rows(e_prompt, e_truthful),
    }
    base = np.concatenate([own] * 5)
    print(f"n={n} prompts; relevance of the original's own answers: median {np.median(own):.3f}")
    print("ratio  " + "  ".join(f"{name:>48}" for name in cases))
    for ratio in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        cells = []
        for name, values in cases.items():
            reference = base if len(values) == len(base) else own
            on_topic = (values >= ratio * np.maximum(reference, 0)).mean()
            cells.append(f"{'kept' if 'keep' in name else 'flagged'} {on_topic if 'keep' in name else 1 - on_topic:6.1%}")
        print(f"{ratio:5.2f}  " + "  ".join(f"{c:>48}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
