"""Normal data in the model's own words: the original model's answers to the normal prompts.

The KL and mismatch terms pull the model toward the normal data. When that data is written in
another voice (TruthfulQA's terse "No, ..." answers, ChatGPT's long lists), the unlearned model
drifts toward that voice on every prompt, which shows as benign answers that change style or go off
topic. Answering the normal prompts with the original model itself (greedy, before any update) makes
the targets what the model already says, so keeping them costs no drift (``normal_answers=self``).

Answers are generated once and cached on disk, keyed by everything that determines them (model
weights' identity, prompts, template, token budget), so repeated runs and resumes reuse them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

from unlearnkit.config import ModelConfig
from unlearnkit.modeling import cache_dir, resolve_model_path

_SENTENCE_END = re.compile(r"(?<=[^\d\s])[.!?](?=\s|$)|\n")  # not "2." of a numbered list


def model_fingerprint(config: ModelConfig) -> str:
    """Identity of a model's weights: a local folder's files (name, size, mtime), else hub name@revision."""
    path = Path(resolve_model_path(config.name)).expanduser()
    if not path.is_dir():
        return f"hub:{config.name}@{config.revision or 'main'}"
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".gguf"))
    stats = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    return "local:" + str(path.resolve()) + ":" + hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def trim_unfinished(text: str) -> str:
    """An answer cut by the token budget, ended at its last complete sentence (when it has one),
    so that training on answer + EOS does not teach the model to stop mid-sentence."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else text


def own_answers(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    fingerprint: str,
    template: str,
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = True,
) -> list[str]:
    """The model's greedy answer to each question (cached); unfinished answers trimmed to whole sentences.

    Call with the ORIGINAL model, before any update. Empty answers are replaced by a single space's
    worth of nothing: callers get exactly ``len(questions)`` strings, possibly empty.
    """
    from unlearnkit.evaluate.generate import GenerationSettings, generate

    key = hashlib.sha256(json.dumps([fingerprint, template, max_new_tokens, list(questions)]).encode()).hexdigest()[:24]
    path = cache_dir() / "own_answers" / f"{key}.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("questions") == list(questions):
            return cached["answers"]
    settings = GenerationSettings(template=template, max_new_tokens=max_new_tokens, batch_size=batch_size)
    generated = generate(model, tokenizer, questions, settings, progress=progress, desc="answering normal prompts (original model)")
    answers = [text if done else trim_unfinished(text) for text, done in zip(generated.responses, generated.finished)]
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"fingerprint": fingerprint, "template": template, "max_new_tokens": max_new_tokens,
               "questions": list(questions), "answers": answers}
    handle, staging = tempfile.mkstemp(prefix=".own-", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(payload, out)
    os.replace(staging, path)  # atomic: a concurrent or killed run never reads half a file
    return answers


def answered_by_original(model: Any, tokenizer: Any, examples: Sequence[Any], model_config: ModelConfig, template: str,
                         max_new_tokens: int, progress: bool = True) -> list[Any]:
    """``examples`` (QAExample) with their answers replaced by the original model's own (``own_answers``, cached under
    ``model_config``'s fingerprint); rows it answered with nothing are dropped. What ``normal_answers=self`` trains on."""
    from unlearnkit.data import QAExample

    answers = own_answers(model, tokenizer, [e.question for e in examples], fingerprint=model_fingerprint(model_config),
                          template=template, max_new_tokens=max_new_tokens, progress=progress)
    return [QAExample(e.question, a) for e, a in zip(examples, answers) if a.strip()]
