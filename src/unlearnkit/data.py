"""Question/answer data: loading, prompt formats, tokenization with answer masks, and step batches.

Answer masks come from token ids: the prompt and the answer are tokenized separately and the id lists
concatenated, so the first answer token is never lost to a re-tokenization of the joined string, and
``labels`` are -100 on the prompt and padding. Which examples go into step ``s`` is a pure function of
(seed, s), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import functools
import json
from itertools import zip_longest
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from unlearnkit.errors import UserError
from unlearnkit.losses import IGNORE_INDEX

TEMPLATES = ("paper", "chat", "plain")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class QAExample:
    question: str
    answer: str
    preferred: str | None = None  # an alternative answer preferred over ``answer`` (method dpo)


# ----------------------------------------------------------------------------------------------- loading
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}: line {number} is not a JSON object; each line must be {{\"question\": ..., \"answer\": ...}}")
            rows.append(row)
    return rows


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a local .jsonl / .json (list or JSON lines) / .csv / .parquet file.

    A file that is not UTF-8 text (binary, another encoding) or cannot be read ends in one UserError line."""
    try:
        return _read_table(path)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (undecodable byte at offset {exc.start}); give a UTF-8 "
                        ".jsonl/.json/.csv file or a .parquet file") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}; check the path and its permissions") from None


def _read_table(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        text = path.read_text(encoding="utf-8").lstrip()
        if text.startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
            if not all(isinstance(r, dict) for r in rows):
                raise UserError(f"{path}: every item of the JSON list must be an object")
            return rows
        return _read_jsonl(path)
    import pandas as pd

    if suffix == ".csv":
        path.read_bytes().decode("utf-8")  # a binary or non-UTF-8 file: named as such, not as a CSV parse error
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype=str) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas raises many types; the message is what the user needs
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    # Missing values (Parquet nulls arrive as NaN) become None, so they read as empty, not as "nan".
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def _load_hub_rows(name: str, split: str) -> list[dict[str, Any]]:
    """Rows of a hub dataset ``owner/name`` or ``owner/name:subset`` (e.g. truthfulqa/truthful_qa:generation)."""
    import datasets

    from unlearnkit import hub

    name, _, subset = name.partition(":")
    if not hub.hub_reachable():  # only the local cache: no minute of retries for a name that is not there
        try:
            with hub.datasets_offline():
                return list(datasets.load_dataset(name, subset or None, split=split))
        except OSError:  # not cached (datasets raises ConnectionError / FileNotFoundError, both OSError)
            raise hub.unreachable_error("dataset", name) from None
        except Exception as exc:  # cached, but e.g. a bad split: one line is enough
            raise UserError(f"cannot load hub dataset '{name}' (split {split}): {str(exc).splitlines()[0]}") from None
    try:
        return list(datasets.load_dataset(name, subset or None, split=split))
    except Exception as exc:  # network, missing dataset, bad split: one line is enough
        raise UserError(f"cannot load hub dataset '{name}' (split {split}): {str(exc).splitlines()[0]}") from None


def load_rows(source: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows from a builtin dataset name, a builtin TOFU split (``tofu:forget05``), a local file, or a hub
    dataset (``hf:NAME[:SUBSET]`` or ``owner/name``)."""
    from unlearnkit.builtin.datasets import BUILTIN_DATASETS, load_builtin_dataset, tofu_rows

    if source in BUILTIN_DATASETS:
        return load_builtin_dataset(source)
    if source.startswith("tofu:"):
        return tofu_rows(source[5:])
    if source.startswith("hf:"):
        return _load_hub_rows(source[3:], split)
    path = Path(source).expanduser()
    if path.is_file():
        return read_table(path)
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        raise UserError(f"data file {source} not found (or not a file); check the path")
    if "/" in source and not source.startswith((".", "/")):
        return _load_hub_rows(source, split)
    raise UserError(
        f"unknown dataset '{source}': not a builtin name ({', '.join(sorted(BUILTIN_DATASETS))}), "
        "not a local file, not hf:NAME"
    )


def source_parts(source: str) -> list[str]:
    """The sources a data source joins with ``+`` (``alpaca_instructions+toxicchat_benign``); a file whose name
    holds a ``+`` is one source."""
    return [part.strip() for part in source.split("+")] if "+" in source and not Path(source).exists() else [source]


def load_qa(
    source: str,
    *,
    split: str = "train",
    question_column: str = "question",
    answer_column: str = "answer",
    limit: int = 0,
    where: str = "",
    need_answers: bool = True,
    preferred_column: str = "",
) -> list[QAExample]:
    """Question/answer pairs from ``source``; every row must have a non-empty answer unless ``need_answers`` is off.

    ``source`` may join several sources with ``+`` (``alpaca_instructions+toxicchat_benign``): their rows are
    interleaved one by one, so a ``limit`` draws evenly from each. Split, columns and filter apply to every part.
    ``where`` keeps only rows matching ``column=value[,column=value]`` (text comparison, case-insensitive),
    e.g. ``is_response_0_safe=false`` to take PKU-SafeRLHF's unsafe responses.
    With ``need_answers=False`` (the answers will be generated, ``normal_answers=self``) prompt-only rows are
    kept with an empty answer. ``preferred_column`` also reads a preferred alternative answer per row (method
    dpo; must be non-empty). Raises UserError naming the file and row for a missing column or an empty answer.
    """
    parts = source_parts(source)
    if any(not part for part in parts):
        raise UserError(f"data source '{source}' has an empty part; join sources as name+name")
    loaded = [_load_qa_part(part, split, question_column, answer_column, where, need_answers, preferred_column) for part in parts]
    examples = [example for group in zip_longest(*loaded) for example in group if example is not None]
    return examples[:limit] if limit else examples


def _json_kind(value: Any) -> str:
    """How a cell's value reads to someone who wrote the file: JSON's names for its types."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)) or type(value).__module__ == "numpy":
        return f"a number ({value})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def text_cell(row: dict[str, Any], column: str, source: str, number: int, *, allow_null: bool = False) -> str | None:
    """The text in ``row[column]``. A JSON null (also a Parquet/CSV missing value) or a non-string value
    raises one UserError line naming the source, row and column: stringified, a null question trained as the
    text "None" or as an empty prompt, and a number as its digits. ``allow_null`` returns None for a null."""
    value = row.get(column)
    if isinstance(value, str):
        return value
    if value is None and allow_null:
        return None
    raise UserError(f"{source}: row {number}, column '{column}' is {_json_kind(value)}, not text; "
                    "give a string there or remove the row")


def _load_qa_part(source: str, split: str, question_column: str, answer_column: str, where: str,
                  need_answers: bool, preferred_column: str = "") -> list[QAExample]:
    all_rows = load_rows(source, split)
    rows = filter_rows(all_rows, where, source)
    if not rows:
        raise UserError(f"dataset {source} has no rows" + (f" matching {where}" if where else ""))
    # Messages name a row by its place in the file, also when a filter dropped the rows before it.
    place = {id(row): number for number, row in enumerate(all_rows, start=1)}
    examples = []
    for row in rows:
        number = place[id(row)]
        required = (question_column, answer_column) if need_answers else (question_column,)
        for column in (*required, *([preferred_column] if preferred_column else [])):
            if column not in row:
                raise UserError(
                    f"{source}: row {number} has no column '{column}' (columns: {', '.join(map(str, row))}); "
                    "set the *_question_column / *_answer_column config keys"
                )
        question = text_cell(row, question_column, source, number).strip()
        # Without need_answers the answers are generated later: a null or absent answer is simply none.
        answer = (text_cell(row, answer_column, source, number, allow_null=not need_answers) or "").strip()
        if need_answers and not answer:
            raise UserError(f"{source}: row {number} has an empty answer in column '{answer_column}'; remove or fill it")
        preferred = None
        if preferred_column:
            preferred = text_cell(row, preferred_column, source, number).strip()
            if not preferred:
                raise UserError(f"{source}: row {number} has an empty preferred answer in column '{preferred_column}'; remove or fill it")
        examples.append(QAExample(question, answer, preferred))
    return examples


def filter_rows(rows: list[dict[str, Any]], where: str, source: str) -> list[dict[str, Any]]:
    """Rows whose columns equal the ``column=value`` conditions of ``where`` (comma-separated; all must hold)."""
    if not where.strip():
        return rows
    conditions = []
    for part in where.split(","):
        column, sep, value = part.partition("=")
        if not sep or not column.strip():
            raise UserError(f"filter '{where}' is not column=value[,column=value]")
        conditions.append((column.strip(), value.strip().lower()))
    for column, _ in conditions:
        if rows and column not in rows[0]:
            raise UserError(f"{source}: filter column '{column}' not found (columns: {', '.join(map(str, rows[0]))})")
    return [r for r in rows if all(str(r.get(c)).strip().lower() == v for c, v in conditions)]


# ----------------------------------------------------------------------------------------------- prompts
def format_prompt(tokenizer: Any, question: str, template: str) -> str:
    """The text the model sees before the answer, in one of TEMPLATES.

    paper: "### Question: {q}\\n ### Answer:" (the answer carries its leading space, so BPE merges it as
    it would in the joined text); chat: the tokenizer's chat template with the generation prompt;
    plain: the question itself (continuation of a passage).
    """
    if template == "paper":
        return f"### Question: {question}\n ### Answer:"
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("template=chat but the tokenizer has no chat template; use template=paper")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
    if template == "plain":
        return question
    raise UserError(f"unknown template '{template}'; choose one of {', '.join(TEMPLATES)}")


def format_answer(answer: str, template: str, prompt: str = "") -> str:
    """The answer text as it follows its prompt (leading space where the template joins with one)."""
    if template == "paper":
        return " " + answer
    if template == "plain" and prompt and not prompt[-1].isspace() and not answer[:1].isspace():
        return " " + answer
    return answer


# ----------------------------------------------------------------------------------------------- tokens
def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt ids with the tokenizer's BOS (once) and never a trailing EOS."""
    bos = getattr(tokenizer, "bos_token", None)
    has_bos_text = bool(bos) and prompt.startswith(bos)  # chat templates often write BOS themselves
    ids = tokenizer(prompt, add_special_tokens=not has_bos_text)["input_ids"]
    eos_id = tokenizer.eos_token_id
    if ids and eos_id is not None and ids[-1] == eos_id and not prompt.endswith(tokenizer.eos_token or "\0"):
        ids = ids[:-1]  # tokenizers with add_eos_token append it to every text
    return list(ids)


def _with_eos(tokenizer: Any, ids: list[int]) -> list[int]:
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids


def encode_answer(tokenizer: Any, answer: str) -> list[int]:
    """Answer ids (tokenized on their own) followed by EOS, so the model learns (or unlearns) where the answer ends."""
    return _with_eos(tokenizer, list(tokenizer(answer, add_special_tokens=False)["input_ids"]))


def encode_pair(tokenizer: Any, prompt: str, answer: str, eos: bool = True) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids [+ EOS]) whose concatenation is exactly how the joined text tokenizes.

    The answer ids are the joined text's ids after the prompt's, whenever the prompt's ids are a prefix
    of the joined text's (the mask boundary is a token index, never a string search). That holds the
    seam for every tokenizer family: byte-level BPE merges " Paris" as one token only after the prompt,
    and SentencePiece tokenizers with the legacy normalizer (Llama-2) prepend a "▁" to a text tokenized
    on its own, so " Paris" alone would start with a stray "▁" piece the model never produces after the
    prompt. When a merge crosses the seam (a prompt ending in a space), the prompt ids are kept and the
    answer is tokenized on its own, so the prompt is still exactly masked.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    joined = encode_prompt(tokenizer, prompt + answer) if answer else prompt_ids
    if joined[: len(prompt_ids)] == prompt_ids:
        answer_ids = joined[len(prompt_ids):]
    else:
        answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    return prompt_ids, _with_eos(tokenizer, answer_ids) if eos else answer_ids


def join_prompt_answer(
    prompt_ids: Sequence[int], answer_ids: Sequence[int], max_length: int, bos_id: int | None = None
) -> tuple[list[int], list[int]]:
    """Concatenate ids and build labels (-100 on the prompt), keeping at most ``max_length`` tokens.

    When too long, the answer keeps at least ``min(len(answer), max_length // 2)`` tokens; the prompt
    is cut from the left (its end holds the cue the answer follows), keeping a leading ``bos_id``
    (Llama/OPT-style models expect it), and the answer from the right.
    """
    answer_keep = min(len(answer_ids), max(max_length - len(prompt_ids), max_length // 2))
    prompt_keep = min(len(prompt_ids), max_length - answer_keep)
    prompt = list(prompt_ids[len(prompt_ids) - prompt_keep :])
    if prompt_keep < len(prompt_ids) and bos_id is not None and prompt_ids and prompt_ids[0] == bos_id and prompt_keep:
        prompt = [bos_id] + prompt[1:]
    answer = list(answer_ids[:answer_keep])
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer


def pad_id_of(tokenizer: Any) -> int:
    """Padding id: the tokenizer's pad token, else EOS, else 0 (padding is always masked anyway)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def collate(sequences: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (input_ids, labels) pairs to the longest: input_ids/attention_mask/labels [N, T]."""
    longest = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, (ids, labs) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass(frozen=True)
class TokenizedQA:
    prompt_ids: list[int]
    answer_ids: list[int]
    preferred_ids: list[int] | None = None


def tokenize_qa(tokenizer: Any, examples: Sequence[QAExample], template: str) -> list[TokenizedQA]:
    out = []
    for example in examples:
        prompt = format_prompt(tokenizer, example.question, template)
        prompt_ids, answer_ids = encode_pair(tokenizer, prompt, format_answer(example.answer, template, prompt))
        preferred_ids = None
        if example.preferred is not None:
            preferred_ids = encode_pair(tokenizer, prompt, format_answer(example.preferred, template, prompt))[1]
        out.append(TokenizedQA(prompt_ids, answer_ids, preferred_ids))
    return out


# ----------------------------------------------------------------------------------------------- step batches
@functools.lru_cache(maxsize=8)
def epoch_order(n: int, seed: int, epoch: int, stream: int) -> np.ndarray:
    """Permutation of range(n) for one pass over a set; independent streams for forget/normal data."""
    return np.random.default_rng([seed, stream, epoch]).permutation(n)


def indices_for_step(n: int, batch_size: int, step: int, seed: int, stream: int) -> list[int]:
    """The ``batch_size`` example indices of step ``step`` (0-based), walking seeded epoch permutations."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        out.append(int(epoch_order(n, seed, epoch, stream)[offset]))
    return out


def sample_mismatch(num_forget: int, num_answers: int, k: int, seed: int, step: int) -> np.ndarray:
    """[num_forget, k] indices into the normal answers, drawn independently for each forget example.

    Within one example the k answers are distinct when there are enough of them.
    """
    rng = np.random.default_rng([seed, 7, step])
    replace = num_answers < k
    return np.stack([rng.choice(num_answers, size=k, replace=replace) for _ in range(num_forget)])


def sample_refusals(num_forget: int, num_refusals: int, seed: int, step: int) -> np.ndarray:
    """[num_forget] indices into a refusal list, one per forget example, a pure function of (seed, step)."""
    return np.random.default_rng([seed, 11, step]).integers(num_refusals, size=num_forget)


FORGET_STREAM, NORMAL_STREAM = 1, 2


@dataclass
class StepBatch:
    """One step's sequences, [forget; mismatch; preferred; normal] in that order.

    ``sequences`` holds each (input_ids, labels) pair unpadded; ``slices`` says which of them belong
    to which group. The training step packs them (unlearnkit.batching); ``batch`` is the plain
    right-padded form (the reference computation the packed step is tested against).
    """

    sequences: list[tuple[list[int], list[int]]]
    slices: dict[str, slice]
    pad_id: int

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids, _ in self.sequences)

    @functools.cached_property
    def batch(self) -> dict[str, torch.Tensor]:
        return collate(self.sequences, self.pad_id)


class StepBatcher:
    """Builds the deterministic batch of any step from tokenized forget/normal sets.

    mismatch_source: "normal" draws K answers per forget prompt from ``mismatch_pool`` (answer token ids), or when
    that is empty from the normal answers (paper); "template" uses one
    fixed reply for each forget prompt (templated unlearning); None leaves the group out.
    preferred_source: "refusal" pairs each forget prompt with one of ``refusal_ids`` (drawn from (seed, step));
    "column" with the forget example's own ``preferred_ids``; None leaves the "preferred" group out.
    """

    def __init__(
        self,
        forget: Sequence[TokenizedQA],
        normal: Sequence[TokenizedQA],
        *,
        batch_size: int,
        num_mismatch: int,
        max_length: int,
        pad_id: int,
        seed: int,
        mismatch_source: str | None,
        template_reply_ids: list[int] | None = None,
        use_normal: bool = True,
        bos_id: int | None = None,
        preferred_source: str | None = None,
        refusal_ids: Sequence[list[int]] = (),
        mismatch_pool: Sequence[list[int]] = (),
    ) -> None:
        if not forget:
            raise UserError("the forget set is empty; give at least one question/answer pair")
        if (use_normal or (mismatch_source == "normal" and not mismatch_pool)) and not normal:
            raise UserError("the normal set is empty; this method needs normal question/answer pairs")
        self.forget, self.normal = list(forget), list(normal)
        # The answers the mismatch group draws from: the normal answers (paper), or a pool of their own.
        self.mismatch_answers = [list(a) for a in mismatch_pool] or [ex.answer_ids for ex in self.normal]
        self.batch_size, self.k, self.max_length = batch_size, num_mismatch, max_length
        self.pad_id, self.seed, self.bos_id = pad_id, seed, bos_id
        self.mismatch_source, self.template_reply_ids, self.use_normal = mismatch_source, template_reply_ids, use_normal
        if preferred_source == "refusal" and not refusal_ids:
            raise UserError("no refusal answers to train towards; give at least one")
        if preferred_source == "column" and any(ex.preferred_ids is None for ex in self.forget):
            raise UserError("every forget example needs a preferred answer (set forget_preferred_column)")
        self.preferred_source, self.refusal_ids = preferred_source, [list(r) for r in refusal_ids]

    def __call__(self, step: int) -> StepBatch:
        forget_idx = indices_for_step(len(self.forget), self.batch_size, step, self.seed, FORGET_STREAM)
        groups: dict[str, list[tuple[list[int], list[int]]]] = {"forget": [], "mismatch": [], "preferred": [], "normal": []}
        for i in forget_idx:
            ex = self.forget[i]
            groups["forget"].append(join_prompt_answer(ex.prompt_ids, ex.answer_ids, self.max_length, self.bos_id))
        if self.mismatch_source == "normal":
            draws = sample_mismatch(len(forget_idx), len(self.mismatch_answers), self.k, self.seed, step)
            for row, i in enumerate(forget_idx):
                for j in draws[row]:
                    groups["mismatch"].append(
                        join_prompt_answer(self.forget[i].prompt_ids, self.mismatch_answers[j], self.max_length, self.bos_id)
                    )
        elif self.mismatch_source == "template":
            assert self.template_reply_ids is not None
            for i in forget_idx:
                groups["mismatch"].append(join_prompt_answer(self.forget[i].prompt_ids, self.template_reply_ids, self.max_length, self.bos_id))
        if self.preferred_source is not None:
            groups["preferred"] = self.preferred_group(forget_idx, step)
        if self.use_normal:
            for i in indices_for_step(len(self.normal), self.batch_size, step, self.seed, NORMAL_STREAM):
                ex = self.normal[i]
                groups["normal"].append(join_prompt_answer(ex.prompt_ids, ex.answer_ids, self.max_length, self.bos_id))
        sequences, slices, start = [], {}, 0
        for name, rows in groups.items():
            if rows:
                slices[name] = slice(start, start + len(rows))
                sequences.extend(rows)
                start += len(rows)
        return StepBatch(sequences, slices, self.pad_id)

    def preferred_group(self, forget_idx: list[int], step: int) -> list[tuple[list[int], list[int]]]:
        """Each forget prompt with its preferred answer (a drawn refusal, or the example's own alternative)."""
        if self.preferred_source == "refusal":
            draws = sample_refusals(len(forget_idx), len(self.refusal_ids), self.seed, step)
            answers = [self.refusal_ids[j] for j in draws]
        else:
            answers = [self.forget[i].preferred_ids for i in forget_idx]  # type: ignore[misc]
        return [join_prompt_answer(self.forget[i].prompt_ids, answer, self.max_length, self.bos_id)
                for i, answer in zip(forget_idx, answers)]
