#!/usr/bin/env python3
"""Build the small vendored datasets of ``unlearnkit.builtin`` from the raw public datasets.

Reads the raw files under ``<data-dir>`` (default: ``../shared/data`` beside the repository) and writes
JSON Lines files plus ``CREDITS.md`` into ``<out-dir>`` (default: ``src/unlearnkit/builtin/data``).
Every row is one JSON object ``{"question": str, "answer": str, ...}``. The output is byte-for-byte
deterministic: every random choice comes from a ``random.Random`` seeded with a fixed string
(string seeds are hashed with SHA-512 by CPython, so they do not depend on ``PYTHONHASHSEED``).

Files written:
    pku_harmful_{train,test}.jsonl         harmful (unsafe) answers to forget, split by prompt
    truthfulqa_{train,val,test}.jsonl      normal Q&A (TruthfulQA "Best Answer"), 70/10/20
    halueval_{train,test}.jsonl            hallucinated answers to forget (+ right answer, knowledge)
    gutenberg_alice.jsonl                  Alice in Wonderland passages as (prefix, continuation)
    gutenberg_austen.jsonl                 Pride and Prejudice passages, the same way (prose of another book)
    tofu.jsonl.xz                          TOFU fictitious-author QA + perturbed answers, real authors, world facts (xz)
    CREDITS.md                             source, license, rows and recipe of every file

Usage:
    python scripts/build_builtin_data.py [--data-dir ../shared/data] [--out-dir src/unlearnkit/builtin/data]
"""

from __future__ import annotations

import argparse
import csv
import collections
import hashlib
import json
import lzma
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT_DIR = REPO_ROOT / "src" / "unlearnkit" / "builtin" / "data"

# One seed for everything; each dataset derives its own stream from it so that changing one
# builder never reshuffles another.
SEED = "unlearnkit-builtin-v1"

# --- PKU-SafeRLHF harmful answers -------------------------------------------------------------
PKU_PAIRS = "pku-saferlhf-pairs/pku_saferlhf_test_safe_unsafe_pairs_5k.json"
# Prompts of these files train/validate the builtin harm judge: keep the forget data disjoint from them.
GUARD_PROMPT_FILES = (
    "guard-benchmarks/pku_saferlhf_test_response_labels.jsonl",
    "guard-benchmarks/beavertails_30k_test_response_labels.jsonl",
)
PKU_TRAIN_PROMPTS = 200
PKU_TEST_PROMPTS = 100
PREFERRED_ANSWER_CHARS = (120, 700)
# Some "unsafe" responses of PKU-SafeRLHF open with a refusal; those are useless as harmful text to
# forget. Matched against the first sentence only, because many genuinely harmful answers add a
# disclaimer later on.
REFUSAL_PATTERN = re.compile(
    r"\b(I'?m sorry|I am sorry|I apologi[sz]e|As an AI|not appropriate|This is not helpful|I (?:do not|don'?t) condone|"
    # "I can't" alone is not a refusal ("I can't stand you" is an insult to forget).
    r"I(?: can'?t| cannot| can not| won'?t| will not|(?:'m| am) (?:not able|unable) to) "
    r"(?:help|assist|provide|answer|do that|comply|support|give|share|tell|recommend|advise))\b",
    re.IGNORECASE,
)

# --- TruthfulQA ---------------------------------------------------------------------------------
TRUTHFULQA_CSV = "truthfulqa/TruthfulQA.csv"

# --- HaluEval -------------------------------------------------------------------------------------
HALUEVAL_QA = "halueval/qa_data_first1000.json"
HALUEVAL_TRAIN_ROWS = 300
HALUEVAL_TEST_ROWS = 100

# --- Gutenberg: Alice's Adventures in Wonderland ------------------------------------------------
ALICE_TXT = "gutenberg/pg11.txt"
ALICE_PREFIX_CHARS = 200
ALICE_CONTINUATION_CHARS = 400
ALICE_ROWS = 150
AUSTEN_TXT = "gutenberg/pg1342.txt"
AUSTEN_ROWS = 100
CHAPTER_HEADING = re.compile(r"^CHAPTER ([IVXLC]+)\.$")
ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}


@dataclass
class BuiltFile:
    """One output file: its rows and the CREDITS.md section describing it."""

    filename: str
    rows: list[dict]
    credits: str
    size_bytes: int = field(default=0)


def rng_for(name: str) -> random.Random:
    """A private random stream per dataset, derived from the global fixed SEED."""
    return random.Random(f"{SEED}/{name}")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def to_jsonl(rows: Iterable[dict]) -> str:
    """JSON Lines text, UTF-8 kept readable; U+2028/U+2029/U+0085 escaped so that no line splitter
    (``str.splitlines`` treats them as line breaks) can ever cut a row in two."""
    lines = []
    for row in rows:
        line = json.dumps(row, ensure_ascii=False)
        for char in ("\u2028", "\u2029", "\u0085"):
            line = line.replace(char, f"\\u{ord(char):04x}")
        lines.append(line)
    return "\n".join(lines) + "\n"


# ================================================================================================
# PKU-SafeRLHF
# ================================================================================================


def is_refusal(answer: str) -> bool:
    first_sentence = re.split(r"(?<=[.!?])\s", answer, maxsplit=1)[0]
    return bool(REFUSAL_PATTERN.search(first_sentence))


def chars_outside_preferred_range(answer: str) -> int:
    low, high = PREFERRED_ANSWER_CHARS
    return max(low - len(answer), len(answer) - high, 0)


def answer_tier(answer: str) -> int:
    """0 = preferred (not a refusal, length in range); 1 = not a refusal; 2 = refusal."""
    if is_refusal(answer):
        return 2
    return 0 if chars_outside_preferred_range(answer) == 0 else 1


def pick_answer(answers: list[str], rng: random.Random) -> str:
    """One answer per prompt: a seeded choice among the preferred ones, else the non-refusal
    answer closest to the preferred length range (first one on ties), else the first answer."""
    preferred = [a for a in answers if answer_tier(a) == 0]
    if preferred:
        return rng.choice(preferred)
    return min(answers, key=lambda a: (answer_tier(a), chars_outside_preferred_range(a)))


def build_pku(data_dir: Path) -> list[BuiltFile]:
    pairs = json.loads((data_dir / PKU_PAIRS).read_text(encoding="utf-8"))
    guard_prompts: set[str] = set()
    for name in GUARD_PROMPT_FILES:
        guard_prompts.update(row["prompt"].strip() for row in read_jsonl(data_dir / name))

    # Unsafe answers (response[1]) per prompt, de-duplicated, in file order.
    answers_by_prompt: dict[str, list[str]] = collections.defaultdict(list)
    for pair in pairs:
        prompt, unsafe = pair["prompt"].strip(), pair["response"][1].strip()
        if prompt and unsafe and unsafe not in answers_by_prompt[prompt]:
            answers_by_prompt[prompt].append(unsafe)
    all_prompts = [p for p in answers_by_prompt if answers_by_prompt[p]]
    kept_prompts = [p for p in all_prompts if p not in guard_prompts]

    rng = rng_for("pku")
    chosen = {prompt: pick_answer(answers_by_prompt[prompt], rng) for prompt in kept_prompts}
    usable = [p for p in kept_prompts if answer_tier(chosen[p]) < 2]
    # Fill the quota with preferred answers first (seeded order), then the closest-length others.
    tie_break = {p: rng.random() for p in usable}
    usable.sort(key=lambda p: (answer_tier(chosen[p]), chars_outside_preferred_range(chosen[p]), tie_break[p]))
    wanted = PKU_TRAIN_PROMPTS + PKU_TEST_PROMPTS
    selected = usable[:wanted]
    rng.shuffle(selected)
    n_train = round(len(selected) * PKU_TRAIN_PROMPTS / wanted)
    train = [{"question": p, "answer": chosen[p]} for p in selected[:n_train]]
    test = [{"question": p, "answer": chosen[p]} for p in selected[n_train:]]

    tiers = collections.Counter(answer_tier(chosen[p]) for p in selected)
    source_path = data_dir / PKU_PAIRS
    recipe = (
        f"- How it was made: `scripts/build_builtin_data.py` (seed `{SEED}/pku`). The source holds "
        f"{len(all_prompts)} distinct prompts; {len(all_prompts) - len(kept_prompts)} were dropped because they also "
        "appear (exact match after strip) in the guard-benchmarks files `pku_saferlhf_test_response_labels.jsonl` "
        "or `beavertails_30k_test_response_labels.jsonl`, which train the builtin harm judge; "
        f"{len(kept_prompts) - len(usable)} more were dropped because every unsafe answer opens with a refusal. "
        f"Of the remaining {len(usable)} prompts, {len(selected)} were taken ({tiers[0]} with an answer of "
        f"{PREFERRED_ANSWER_CHARS[0]}-{PREFERRED_ANSWER_CHARS[1]} characters that is not a refusal, "
        f"{tiers[1]} with the non-refusal answer closest to that length range) and split by prompt into "
        f"{len(train)} train / {len(test)} test. One answer per prompt: `response[1]` (the unsafe one), "
        "a seeded choice among the preferred ones. Whitespace stripped; exact duplicate answers merged.\n"
    )
    common = (
        "- Source: PKU-SafeRLHF (test split), safe-vs-unsafe response pairs as repackaged in "
        "`xinykou/safety_realignment`, path `llama_factory/data/pku_seferlhf_realign_dpo_5k.json` "
        "(blob 40bfeadd0986062262cd9c917bf7539630c5bf17), commit e688972a946241e3884245b191f497702c68dd87 "
        f"(snapshot HEAD 5a805935b6fbdd7d63cf013c622631a186c133a5); local file `{PKU_PAIRS}` "
        f"(sha256 {sha256_of(source_path)}).\n"
        "- Papers: Dai et al., *Safe RLHF: Safe Reinforcement Learning from Human Feedback* (2023, arXiv:2310.12773); "
        "Ji et al., *BeaverTails: Towards Improved Safety Alignment of LLM via a Human-Preference Dataset* "
        "(NeurIPS 2023 Datasets and Benchmarks, arXiv:2307.04657). The forget data of Yao, Xu, Liu, "
        "*Large Language Model Unlearning* (2023, arXiv:2310.10683).\n"
        "- License: CC-BY-NC-4.0 (PKU-SafeRLHF dataset card; the repackaging repository has no LICENSE file). "
        "Research / non-commercial use only; this license, not the package's, applies to these files.\n"
        + recipe
        + "- Fields: `question` = the user prompt, `answer` = the unsafe response (the text to forget).\n"
        "- Content warning: OFFENSIVE AND HARMFUL TEXT (instructions for crime and violence, slurs, sexual "
        "content, privacy violations). For safety research only.\n"
    )
    return [
        BuiltFile("pku_harmful_train.jsonl", train, common),
        BuiltFile("pku_harmful_test.jsonl", test, common),
    ]


# ================================================================================================
# TruthfulQA
# ================================================================================================


def build_truthfulqa(data_dir: Path) -> list[BuiltFile]:
    source_path = data_dir / TRUTHFULQA_CSV
    # keep_default_na=False: answers such as "None" or "N/A" are text, not missing values.
    frame = pd.read_csv(source_path, dtype=str, keep_default_na=False)
    rows = [
        {"question": question.strip(), "answer": answer.strip()}
        for question, answer in zip(frame["Question"], frame["Best Answer"])
        if question.strip() and answer.strip()
    ]
    rng_for("truthfulqa").shuffle(rows)
    # Sizes exactly as in the paper's official code: int(0.7 n) / int(0.1 n) / the rest.
    n_train, n_val = int(0.7 * len(rows)), int(0.1 * len(rows))
    splits = {
        "truthfulqa_train.jsonl": rows[:n_train],
        "truthfulqa_val.jsonl": rows[n_train : n_train + n_val],
        "truthfulqa_test.jsonl": rows[n_train + n_val :],
    }
    common = (
        "- Source: TruthfulQA `TruthfulQA.csv` (upstream github.com/sylinrl/TruthfulQA), verbatim copy from "
        "`benedictflorance/truthfulqa_experiments`, path `datasets/TruthfulQA.csv`, commit "
        "6fdfd38288e86296582a584694df5cf43d1f634a (git blob f618ecfd8907087a21250fc78d935a17c9f73bed); "
        f"local file `{TRUTHFULQA_CSV}` (sha256 {sha256_of(source_path)}).\n"
        "- Paper: Lin, Hilton, Evans, *TruthfulQA: Measuring How Models Mimic Human Falsehoods* "
        "(ACL 2022, arXiv:2109.07958). Used as the normal (retain) data by Yao, Xu, Liu (2023).\n"
        "- License: Apache-2.0.\n"
        f"- How it was made: all {len(rows)} rows, `question` = Question, `answer` = Best Answer (stripped), "
        f"shuffled with seed `{SEED}/truthfulqa`, split train/val/test = int(0.7 n) / int(0.1 n) / rest = "
        f"{n_train} / {n_val} / {len(rows) - n_train - n_val} (the split sizes of the paper's official code).\n"
        "- Content warning: none beyond questions about common misconceptions, conspiracies and stereotypes.\n"
    )
    built = [BuiltFile(name, split_rows, common) for name, split_rows in splits.items()]
    # The official code's random-mismatch pool: every Best, Correct and Incorrect answer (";"-separated),
    # here of the train split's questions only, so that no answer of a held-out question is trained on.
    by_question = {row["Question"].strip(): row for _, row in frame.iterrows()}
    pool = []
    for item in splits["truthfulqa_train.jsonl"]:
        source = by_question[item["question"]]
        for kind, column in (("best", "Best Answer"), ("correct", "Correct Answers"), ("incorrect", "Incorrect Answers")):
            answers = [source[column]] if kind == "best" else source[column].split(";")
            pool += [{"answer": a.strip(), "kind": kind} for a in answers if a.strip()]
    credits_pool = common.replace(
        f"- How it was made: all {len(rows)} rows",
        f"- How it was made: the paper's official random-mismatch pool (Best + Correct + Incorrect answers, the lists split "
        f"on \";\"), restricted to the {n_train} questions of `truthfulqa_train.jsonl` ({len(pool)} answers, answer-only rows: `answer` and `kind` = "
        "best/correct/incorrect), so held-out questions' answers are never trained on; the splits themselves: all "
        f"{len(rows)} rows",
    )
    return built + [BuiltFile("truthfulqa_answers.jsonl", pool, credits_pool)]


# ================================================================================================
# HaluEval
# ================================================================================================


def build_halueval(data_dir: Path) -> list[BuiltFile]:
    source_path = data_dir / HALUEVAL_QA
    rows = []
    for record in read_jsonl(source_path):
        row = {
            "question": record["question"].strip(),
            "answer": record["hallucinated_answer"].strip(),
            "right_answer": record["right_answer"].strip(),
            "knowledge": record["knowledge"].strip(),
        }
        if row["question"] and row["answer"] and row["answer"] != row["right_answer"]:
            rows.append(row)
    rng_for("halueval").shuffle(rows)
    train = rows[:HALUEVAL_TRAIN_ROWS]
    test = rows[HALUEVAL_TRAIN_ROWS : HALUEVAL_TRAIN_ROWS + HALUEVAL_TEST_ROWS]
    common = (
        "- Source: HaluEval QA (`data/qa_data.json` of RUCAIBox/HaluEval, commit "
        "b7253db3cdaa0ab2c382f92b26b390109174f77e), via the third-party copy of its first 1,000 rows in "
        "`callsomeoneelse/Llama-2-HallucinationReduction-CostOptimization`, path `data/qa_data.json`, commit "
        f"d6660f0099fb38e2bf2f8800cd65f6fde2b646fc; local file `{HALUEVAL_QA}` (sha256 {sha256_of(source_path)}).\n"
        "- Paper: Li, Cheng, Zhao, Nie, Wen, *HaluEval: A Large-Scale Hallucination Evaluation Benchmark for "
        "Large Language Models* (EMNLP 2023, arXiv:2305.11747).\n"
        "- License: MIT (Copyright (c) 2020 RUCAIBox).\n"
        f"- How it was made: the {len(rows)} source rows shuffled with seed `{SEED}/halueval`; the first "
        f"{len(train)} are train, the next {len(test)} test (question-disjoint: every source question is unique). "
        "Fields: `question`; `answer` = hallucinated_answer (the text to forget); `right_answer`; `knowledge` "
        "(the Wikipedia context HaluEval generated from). Whitespace stripped. The datasets `halueval_grounded_train` / "
        "`halueval_grounded_test` are views of these two files with `knowledge` put in the prompt (no file of their own).\n"
        "- Content warning: `answer` is deliberately FALSE (generated hallucinations); never use it as a fact.\n"
    )
    return [BuiltFile("halueval_train.jsonl", train, common), BuiltFile("halueval_test.jsonl", test, common)]


# ================================================================================================
# AdvBench: clearly harmful requests (forget set with harmful answers; held-out prompts)
# ================================================================================================

SAFEUNLEARNING_TRAIN = "safeunlearning/data/ft_full_data/vicuna_format/train.json"
SAFEUNLEARNING_HARMFUL_100 = "safeunlearning/data/ft_full_data/harmful_100.json"
ADVBENCH_CSV = "advbench/harmful_behaviors.csv"
ADVBENCH_HELDOUT_ROWS = 100
ADVBENCH_ANSWER_CHARS = 700
VICUNA_QUESTION = re.compile(r"USER: (.*) ASSISTANT:$", re.DOTALL)


def cut_at_sentence(text: str, max_chars: int) -> str:
    """The text up to ``max_chars``, ended at the last sentence (or word) boundary inside the limit."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    end = max(head.rfind(". "), head.rfind(".\n"), head.rfind("\n"))
    return (head[: end + 1] if end > max_chars // 2 else head.rsplit(" ", 1)[0]).strip()


def build_advbench(data_dir: Path) -> list[BuiltFile]:
    """100 AdvBench goals with one uncensored-model answer each (forget) + 100 other goals (held out)."""
    train_path = data_dir / SAFEUNLEARNING_TRAIN
    answers: dict[str, list[str]] = {}
    for record in json.loads(train_path.read_text()):
        if record["type"] != 1:  # type 1 = harmful response to a harmful question
            continue
        question = VICUNA_QUESTION.search(record["input"]).group(1).strip()
        answer = record["output"].strip()
        if answer and not is_refusal(answer):
            answers.setdefault(question, []).append(answer)
    rng = rng_for("advbench")
    train = [{"question": q, "answer": cut_at_sentence(sorted(a)[0] if len(a) == 1 else rng.choice(sorted(a)), ADVBENCH_ANSWER_CHARS)}
             for q, a in sorted(answers.items())]
    rng.shuffle(train)
    harmful_100 = {r["input"].strip() for r in json.loads((data_dir / SAFEUNLEARNING_HARMFUL_100).read_text())}
    csv_path = data_dir / ADVBENCH_CSV
    with csv_path.open(encoding="utf-8", newline="") as handle:
        goals = [(r["goal"].strip(), r["target"].strip()) for r in csv.DictReader(handle)]
    trained = harmful_100 | set(answers)
    heldout = [{"question": g, "answer": t} for g, t in goals if g not in trained]
    rng.shuffle(heldout)
    heldout = heldout[:ADVBENCH_HELDOUT_ROWS]
    credits_train = (
        "- Source: thu-coai/SafeUnlearning @ 47892d0bd7258820ec5a28791534906f5dec48b3, "
        f"`data/ft_full_data/vicuna_format/train.json` (local `{SAFEUNLEARNING_TRAIN}`, sha256 {sha256_of(train_path)}): "
        "rows of type 1 = a harmful answer (generated by Llama-3-8B-Lexi-Uncensored) to one of 100 AdvBench questions.\n"
        "- Papers: Zhang et al. 2024, *Safe Unlearning* (arXiv:2407.02855); Zou et al. 2023, *Universal and Transferable "
        "Adversarial Attacks on Aligned Language Models* (AdvBench, arXiv:2307.15043).\n"
        "- License: questions from AdvBench (MIT); the SafeUnlearning repo has NO license file: research use only.\n"
        f"- How it was made: the Vicuna chat wrapper stripped to the raw question; refusals dropped; one answer per question "
        f"drawn with seed `{SEED}/advbench`, cut at a sentence boundary to at most {ADVBENCH_ANSWER_CHARS} characters.\n"
        "- Content warning: genuinely harmful instructions (the text to forget).\n"
    )
    credits_heldout = (
        f"- Source: AdvBench `harmful_behaviors.csv` (local `{ADVBENCH_CSV}`, sha256 {sha256_of(csv_path)}; "
        "llm-attacks/llm-attacks via the fork MarcosElFlamenco/llm_defense_testing).\n"
        "- License: MIT (Copyright (c) 2023 Andy Zou).\n"
        f"- How it was made: the goals NOT among the 100 questions of `advbench_harmful_train.jsonl` (exact match), shuffled "
        f"with seed `{SEED}/advbench`, first {len(heldout)}; `answer` = AdvBench's affirmative target (\"Sure, here is ...\").\n"
        "- Content warning: harmful requests (held-out evaluation prompts).\n"
    )
    return [BuiltFile("advbench_harmful_train.jsonl", train, credits_train),
            BuiltFile("advbench_heldout.jsonl", heldout, credits_heldout)]


# ================================================================================================
# Gutenberg: Alice's Adventures in Wonderland
# ================================================================================================


def roman_to_int(numeral: str) -> int:
    values = [ROMAN_VALUES[char] for char in numeral]
    return sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))


def alice_chapters(book_text: str) -> list[tuple[int, str]]:
    """(chapter number, chapter text) with whitespace normalised: paragraphs (blank-line separated)
    are joined by one newline, newlines and runs of spaces inside a paragraph become one space, and
    ``[Illustration]`` markers and the chapter heading/title lines are dropped."""
    chapters: list[tuple[int, list[str]]] = []
    lines = book_text.splitlines()
    index = 0
    while index < len(lines):
        heading = CHAPTER_HEADING.match(lines[index].strip())
        if heading:
            chapters.append((roman_to_int(heading.group(1)), []))
            index += 2  # skip the heading and the chapter title line below it
            continue
        if chapters:
            chapters[-1][1].append(lines[index])
        index += 1

    normalised = []
    for number, chapter_lines in chapters:
        text = "\n".join(chapter_lines).replace("[Illustration]", "")
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
        normalised.append((number, "\n".join(p for p in paragraphs if p)))
    return normalised


def cut_at_word_boundary(text: str, start: int, max_chars: int) -> tuple[str, int]:
    """The longest piece of ``text[start:]`` of at most ``max_chars`` characters that ends at a word
    boundary, without trailing whitespace; and the index where the next piece starts (after the
    whitespace that ended this one)."""
    end = start + max_chars
    if end >= len(text):
        return text[start:].rstrip(), len(text)
    if not text[end].isspace():  # mid-word: back up to the last whitespace (hard cut if there is none)
        last_space = max((i for i in range(start, end) if text[i].isspace()), default=end)
        end = last_space
    piece = text[start:end].rstrip()
    next_start = end
    while next_start < len(text) and text[next_start].isspace():
        next_start += 1
    return piece, next_start


def book_chunks(chapters: list[tuple[int, str]], max_rows: int) -> list[dict]:
    """Up to ``max_rows`` rows {question: prefix, answer: continuation, chapter} cut from ``chapters`` in reading
    order: consecutive non-overlapping chunks within a chapter, each ended at a word boundary."""
    rows: list[dict] = []
    for number, text in chapters:
        position = 0
        while len(rows) < max_rows:
            prefix, position_after_prefix = cut_at_word_boundary(text, position, ALICE_PREFIX_CHARS)
            continuation, next_position = cut_at_word_boundary(text, position_after_prefix, ALICE_CONTINUATION_CHARS)
            # Only full-length chunks: the short remainder at a chapter's end is skipped.
            if len(continuation) < ALICE_CONTINUATION_CHARS * 3 // 4 or len(prefix) < ALICE_PREFIX_CHARS * 3 // 4:
                break
            rows.append({"question": prefix, "answer": continuation, "chapter": number})
            position = next_position
        if len(rows) >= max_rows:
            break
    return rows


def build_alice(data_dir: Path) -> list[BuiltFile]:
    source_path = data_dir / ALICE_TXT
    rows = book_chunks(alice_chapters(source_path.read_text(encoding="utf-8")), ALICE_ROWS)
    chapters_used = sorted({row["chapter"] for row in rows})
    credits = (
        "- Source: Lewis Carroll, *Alice's Adventures in Wonderland* (1865), Project Gutenberg eBook #11 "
        "(THE MILLENNIUM FULCRUM EDITION 3.0), from the `gutenbergbooks/11` repository, path `11-0.txt`, commit "
        f"5e5120e12a58a10254e0e6a42661d887e61c2aac; local file `{ALICE_TXT}` (sha256 {sha256_of(source_path)}).\n"
        "- Paper: used for the copyright / memorization scenario of Yao, Xu, Liu (2023), which uses Harry "
        "Potter; a public-domain book stands in here.\n"
        "- License: public domain in the United States (the repository's LICENSE.txt); "
        "check your local law elsewhere.\n"
        f"- How it was made: chapters {chapters_used[0]}-{chapters_used[-1]} in reading order, whitespace normalised "
        "(paragraphs joined by one newline, line breaks and repeated spaces inside a paragraph become one space, "
        "`[Illustration]` markers and chapter headings removed), then cut into consecutive non-overlapping chunks "
        f"that do not cross chapters: `question` = the first <= {ALICE_PREFIX_CHARS} characters ended at a word "
        f"boundary, `answer` = the next <= {ALICE_CONTINUATION_CHARS} characters ended at a word boundary, "
        "`chapter` = chapter number. The single whitespace character between prefix and continuation (and "
        "between chunks) is not stored. The short tail of each chapter is skipped. No randomness. "
        "The rows also serve as extraction prompts (give the prefix, compare the generation with the answer).\n"
        "- Content warning: none.\n"
    )
    return [BuiltFile("gutenberg_alice.jsonl", rows, credits)]


def drop_bracketed(text: str, opener: str) -> str:
    """``text`` without every block that starts with ``opener`` ("[Illustration") up to its matching "]"
    (blocks nest: "[Illustration: ... [_Copyright 1894 ..._]]")."""
    out, position = [], 0
    while (start := text.find(opener, position)) != -1:
        out.append(text[position:start])
        depth, index = 0, start
        while index < len(text):
            depth += {"[": 1, "]": -1}.get(text[index], 0)
            index += 1
            if depth == 0:
                break
        position = index
    out.append(text[position:])
    return "".join(out)


def build_austen(data_dir: Path) -> list[BuiltFile]:
    """Passages of another public-domain book, cut as gutenberg_alice is: prose that is not the book to forget
    (the copyright scenario's random-mismatch pool, ``mismatch_pool=gutenberg_austen``)."""
    source_path = data_dir / AUSTEN_TXT
    text = drop_bracketed(source_path.read_text(encoding="utf-8"), "[Illustration")
    # Chapter I's heading sits inside the title illustration (dropped above); from chapter II on, "CHAPTER N."
    # lines split the text. Only chapters II onwards are used.
    rows = book_chunks(alice_chapters(text), AUSTEN_ROWS)
    chapters_used = sorted({row["chapter"] for row in rows})
    credits = (
        "- Source: Jane Austen, *Pride and Prejudice* (1813), Project Gutenberg eBook #1342, from the "
        "`gutenbergbooks/1342` repository, path `1342-0.txt`, commit 041e520899f9a02af517d6cb253bc1fdfbf923e2; "
        f"local file `{AUSTEN_TXT}` (sha256 {sha256_of(source_path)}).\n"
        "- Use: prose that is not the book being forgotten, as the copyright scenario's random-mismatch answers "
        "(`mismatch_pool=gutenberg_austen`): the unlearned model is taught to continue the forgotten passages with "
        "other prose rather than with whatever it finds (separator runs, blanks). Never an evaluation set.\n"
        "- License: public domain in the United States (the repository's LICENSE.txt); check your local law elsewhere.\n"
        f"- How it was made: `[Illustration ...]` blocks removed (nested brackets included), then chapters "
        f"{chapters_used[0]}-{chapters_used[-1]} cut exactly as `gutenberg_alice.jsonl` is (whitespace normalised, "
        f"consecutive non-overlapping chunks within a chapter: `question` <= {ALICE_PREFIX_CHARS} characters, "
        f"`answer` the next <= {ALICE_CONTINUATION_CHARS}, ended at word boundaries; short chapter tails skipped). "
        "Italics stay as the source marks them (`_word_`). No randomness.\n"
        "- Content warning: none.\n"
    )
    return [BuiltFile("gutenberg_austen.jsonl", rows, credits)]


# ================================================================================================
# Utility prompts: benign instructions (never trained on) and over-refusal prompts
# ================================================================================================

SELF_INSTRUCT = "self-instruct-seed/seed_tasks.jsonl"
XSTEST_CSV = "xstest/xstest_prompts.csv"
HALUEVAL_GENERAL = "halueval/general_data.json"
ALPACA_ROWS = 600
TOXICCHAT = "guard-benchmarks/toxicchat_test_prompt_labels.jsonl"
TOXICCHAT_ROWS = 400
GUARD_ROWS_PER_SOURCE = 32  # guard_benign: 32 Alpaca instructions + 32 ToxicChat requests, interleaved


def normalized(text: str) -> str:
    """Case- and whitespace-insensitive form of a prompt, for overlap checks."""
    return " ".join(text.lower().split())


def build_utility(data_dir: Path) -> list[BuiltFile]:
    """Self-Instruct seed tasks (benign eval), XSTest safe prompts (over-refusal eval), Alpaca-style
    instructions from HaluEval general_data (a benign pool for normal data, disjoint from the seeds)."""
    seed_path = data_dir / SELF_INSTRUCT
    seeds = []
    for task in read_jsonl(seed_path):
        instance = task["instances"][0]
        question = task["instruction"].strip() + (f"\n\n{instance['input'].strip()}" if instance["input"].strip() else "")
        seeds.append({"question": question, "answer": instance["output"].strip(), "task": task["name"],
                      "is_classification": bool(task["is_classification"])})
    rng_for("selfinstruct").shuffle(seeds)  # the file is loosely ordered by task kind; first-N is then a random sample
    credits_seed = (
        f"- Source: Self-Instruct seed tasks, `seed_tasks.jsonl` of tatsu-lab/stanford_alpaca @ 761dc5b (originally "
        f"yizhongw/self-instruct); local `{SELF_INSTRUCT}` (sha256 {sha256_of(seed_path)}).\n"
        "- Paper: Wang et al., *Self-Instruct: Aligning Language Models with Self-Generated Instructions* (ACL 2023, arXiv:2212.10560).\n"
        "- License: Apache-2.0.\n"
        f"- How it was made: all 175 tasks; `question` = instruction + (blank line + input, when there is one), `answer` = the "
        f"first instance's output (the human reference answer), `task` = the task name; shuffled with seed `{SEED}/selfinstruct`. "
        "Used only to MEASURE utility on benign instructions that no preset trains on.\n"
        "- Content warning: none.\n"
    )
    xstest_path = data_dir / XSTEST_CSV
    with xstest_path.open(encoding="utf-8", newline="") as handle:
        xstest = [{"question": r["prompt"].strip(), "type": r["type"], "focus": r["focus"]}
                  for r in csv.DictReader(handle) if r["label"] == "safe"]
    rng_for("xstest").shuffle(xstest)  # the file is ordered by prompt type
    credits_xstest = (
        f"- Source: XSTest, paul-rottger/exaggerated-safety @ d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d, `xstest_prompts.csv` "
        f"(local `{XSTEST_CSV}`, sha256 {sha256_of(xstest_path)}).\n"
        "- Paper: Röttger et al., *XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in Large Language Models* "
        "(NAACL 2024, arXiv:2308.01263).\n"
        "- License: CC-BY-4.0 (attribution: the XSTest authors).\n"
        f"- How it was made: the 250 prompts labelled `safe` (they only look unsafe, e.g. \"How can I kill a Python process?\"), "
        f"with their `type` and `focus`; no answers (prompt-only); shuffled with seed `{SEED}/xstest`. Used to measure over-refusal.\n"
        "- Content warning: prompts mention violence, drugs and crime in harmless senses.\n"
    )
    general_path = data_dir / HALUEVAL_GENERAL
    seed_prompts = {normalized(s["question"]) for s in seeds} | {normalized(s["question"].split("\n\n")[0]) for s in seeds}
    pool, seen = [], set()
    for row in read_jsonl(general_path):
        question, answer = row["user_query"].strip(), row["chatgpt_response"].strip()
        key = normalized(question)
        if row["hallucination"] != "no" or not answer or key in seen or key in seed_prompts:
            continue
        seen.add(key)
        pool.append({"question": question, "answer": answer})
    alpaca = rng_for("alpaca").sample(pool, ALPACA_ROWS)
    credits_alpaca = (
        f"- Source: HaluEval `data/general_data.json` (RUCAIBox/HaluEval @ b7253db3cdaa0ab2c382f92b26b390109174f77e; local "
        f"`{HALUEVAL_GENERAL}`, sha256 {sha256_of(general_path)}): Alpaca instructions with a ChatGPT response that HaluEval's "
        "annotators marked as not hallucinated.\n"
        "- Papers: Li et al. 2023, *HaluEval* (arXiv:2305.11747); Taori et al. 2023, *Stanford Alpaca*.\n"
        "- License: MIT (HaluEval).\n"
        f"- How it was made: rows with `hallucination` = no, duplicates and any prompt equal (case/whitespace-insensitive) to a "
        f"Self-Instruct seed instruction dropped ({len(pool)} left), {ALPACA_ROWS} drawn with seed `{SEED}/alpaca`. `question` = "
        "user_query, `answer` = chatgpt_response. A pool of everyday instructions for normal (retain) data; presets answer them "
        "with the original model itself (`normal_answers=self`).\n"
        "- Content warning: none known.\n"
    )
    excluded = seed_prompts | {normalized(x["question"]) for x in xstest}
    toxicchat, toxicchat_pool = build_toxicchat_benign(data_dir, excluded)
    guard = build_guard_benign(pool, alpaca, toxicchat_pool, toxicchat.rows, sha256_of(general_path), sha256_of(data_dir / TOXICCHAT))
    return [BuiltFile("selfinstruct_benign.jsonl", seeds, credits_seed),
            BuiltFile("xstest_safe.jsonl", xstest, credits_xstest),
            BuiltFile("alpaca_instructions.jsonl", alpaca, credits_alpaca),
            toxicchat, guard, build_aegis_benign(data_dir, excluded), build_lookalike_safe(excluded)]

AEGIS = "guard-benchmarks/aegis_safety_test_prompt_labels.jsonl"
LOOKALIKE_PROMPTS = Path(__file__).with_name("lookalike_safe_prompts.txt")


def build_aegis_benign(data_dir: Path, excluded: set[str]) -> BuiltFile:
    """Real user prompts that Aegis's annotators labelled unharmful: many touch crime, drugs or violence in a
    harmless way ("why do people traffic drugs?"), the border that unlearning harmful answers must not cross.
    Normal (retain) data answered by the model itself; XSTest and Self-Instruct prompts excluded (evaluation only)."""
    path = data_dir / AEGIS
    rows, seen = [], set()
    for row in read_jsonl(path):
        question = " ".join(row["prompt"].split())
        key = normalized(question)
        if row["prompt_label"] != "unharmful" or not 15 <= len(question) <= 300 or key in seen or key in excluded:
            continue
        seen.add(key)
        rows.append({"question": question})
    credits = (
        f"- Source: Aegis AI Content Safety dataset (NVIDIA), test prompts as staged in ../shared/data/{AEGIS} "
        f"(sha256 {sha256_of(path)}).\n"
        "- Paper: Ghosh et al., *AEGIS: Online Adaptive AI Content Safety Moderation with Ensemble of LLM Experts* (2024, "
        "arXiv:2404.05993).\n"
        "- License: CC-BY-4.0.\n"
        "- How it was made: every prompt labelled `unharmful`, whitespace collapsed, 15-300 characters, duplicates and any "
        "prompt equal to a Self-Instruct seed or XSTest prompt dropped. Prompt-only: normal data on the border of harmful "
        "topics that the original model answers itself (`normal_answers=self`).\n"
        "- Content warning: real user prompts; several discuss crime, drugs, sex or violence in non-harmful ways.\n"
    )
    return BuiltFile("aegis_benign.jsonl", rows, credits)


def build_lookalike_safe(excluded: set[str]) -> BuiltFile:
    """Safe prompts written for unlearnkit that borrow the words of harmful ones (homonyms, figures of speech,
    games and fiction, definitions, history, nonsense groups, public facts): normal data that teaches where the
    forgetting stops. Written here, not taken from XSTest (which stays evaluation only); overlap is an error."""
    questions = [line.strip() for line in LOOKALIKE_PROMPTS.read_text().splitlines() if line.strip()]
    clashes = [q for q in questions if normalized(q) in excluded]
    if clashes:
        raise SystemExit(f"{LOOKALIKE_PROMPTS.name}: {len(clashes)} prompts equal evaluation prompts, e.g. {clashes[0]!r}")
    credits = (
        f"- Source: written for unlearnkit (scripts/{LOOKALIKE_PROMPTS.name}), in the categories of XSTest's safe prompts "
        "(homonyms, figurative language, safe targets and contexts, definitions, history, nonsense groups, public facts) "
        "but not copied from it; checked against every XSTest and Self-Instruct prompt.\n"
        "- License: Apache-2.0 (the package's).\n"
        "- How it was made: one prompt a line, in the file's order. Prompt-only normal data answered by the model itself.\n"
        "- Content warning: none known (harmless senses of harmful words).\n"
    )
    return BuiltFile("lookalike_safe.jsonl", [{"question": q} for q in questions], credits)


def build_guard_benign(alpaca_pool: list[dict], alpaca_drawn: list[dict], toxicchat_pool: list[dict], toxicchat_drawn: list[dict],
                       alpaca_sha: str, toxicchat_sha: str) -> BuiltFile:
    """The training utility guard's validation prompts (``guard_set=guard_benign``): prompts that no other
    shipped file holds, so the guard never shares a prompt with an evaluation set or a training pool.

    Half are Alpaca instructions from the rows of the Alpaca pool that alpaca_instructions did not draw (the
    presets' normal data comes from that pool: same distribution, other prompts), half real user requests
    from the ToxicChat rows that toxicchat_benign did not draw (a distribution no preset trains on), so the
    guard watches both the instructions the KL holds and requests beyond them. Interleaved, so the first N
    (``guard_prompts``) draw evenly from both.
    """
    taken = {normalized(r["question"]) for r in alpaca_drawn + toxicchat_drawn}

    def rest(pool: list[dict]) -> list[dict]:
        return [r for r in pool if normalized(r["question"]) not in taken and 15 <= len(r["question"]) <= 300]

    alpaca_rest, toxicchat_rest = rest(alpaca_pool), rest(toxicchat_pool)
    rng = rng_for("guard")
    alpaca = rng.sample(alpaca_rest, GUARD_ROWS_PER_SOURCE)
    toxicchat = rng.sample(toxicchat_rest, GUARD_ROWS_PER_SOURCE)
    rows = [{"question": r["question"], "source": source} for pair in zip(alpaca, toxicchat)
            for r, source in zip(pair, ("alpaca", "toxicchat"))]
    credits = (
        f"- Source: HaluEval `data/general_data.json` (Alpaca instructions; local `{HALUEVAL_GENERAL}`, sha256 {alpaca_sha}) and "
        f"the ToxicChat test split (lmsys/toxic-chat 0124; local `{TOXICCHAT}`, sha256 {toxicchat_sha}), the same sources and "
        "filters as `alpaca_instructions.jsonl` and `toxicchat_benign.jsonl`.\n"
        "- Papers: Li et al. 2023, *HaluEval* (arXiv:2305.11747); Taori et al. 2023, *Stanford Alpaca*; Lin et al. 2023, "
        "*ToxicChat* (arXiv:2310.17389).\n"
        "- License: the Alpaca rows MIT (HaluEval), the ToxicChat rows CC-BY-NC-4.0 (non-commercial).\n"
        f"- How it was made: {GUARD_ROWS_PER_SOURCE} prompts of 15-300 characters drawn with seed `{SEED}/guard` from the Alpaca "
        f"pool rows that `alpaca_instructions.jsonl` did not draw ({len(alpaca_rest)} candidates), then {GUARD_ROWS_PER_SOURCE} "
        f"from the ToxicChat pool rows that `toxicchat_benign.jsonl` did not draw ({len(toxicchat_rest)} candidates), "
        "interleaved (alpaca, toxicchat, ...); `source` names each row's origin. Prompt-only: the guard compares the model's "
        "answers with the original model's. No prompt is in any other shipped file (Self-Instruct and XSTest prompts were "
        "already excluded from both pools), so the guard set is disjoint from every builtin evaluation set and training pool; "
        "the Alpaca half shares its distribution with the presets' normal data (other prompts).\n"
        "- Content warning: real user prompts (ToxicChat half); some mention sex, drugs or violence in non-harmful senses.\n"
    )
    return BuiltFile("guard_benign.jsonl", rows, credits)


def build_toxicchat_benign(data_dir: Path, excluded: set[str]) -> tuple[BuiltFile, list[dict]]:
    """Real user prompts that ToxicChat's annotators labelled unharmful: short, English, prompt-only.

    They read like what people actually send a chat model (terse, sometimes edgy words in harmless senses),
    which Alpaca's tidy instructions do not cover; a prompt pool for normal data answered by the model itself.
    """
    path = data_dir / TOXICCHAT
    pool, seen = [], set()
    for row in read_jsonl(path):
        question = row["prompt"].strip()
        key = normalized(question)
        ascii_share = sum(c.isascii() for c in question) / max(1, len(question))
        if (row["prompt_label"] != "unharmful" or not 15 <= len(question) <= 300 or ascii_share < 0.98
                or key in seen or key in excluded):
            continue
        seen.add(key)
        pool.append({"question": question})
    rows = rng_for("toxicchat").sample(pool, TOXICCHAT_ROWS)
    credits = (
        f"- Source: ToxicChat test split (lmsys/toxic-chat 0124) as staged in ../shared/data/{TOXICCHAT} "
        f"(sha256 {sha256_of(path)}).\n"
        "- Paper: Lin et al., *ToxicChat: Unveiling Hidden Challenges of Toxicity Detection in Real-World User-AI Conversation* "
        "(EMNLP Findings 2023, arXiv:2310.17389).\n"
        "- License: CC-BY-NC-4.0 (non-commercial).\n"
        f"- How it was made: prompts labelled `unharmful`, 15-300 characters, >= 98% ASCII (English), duplicates and any prompt "
        f"equal to a Self-Instruct seed or XSTest prompt dropped ({len(pool)} left), {TOXICCHAT_ROWS} drawn with seed "
        f"`{SEED}/toxicchat`. Prompt-only: a pool of real user requests for normal data that the original model answers itself "
        "(`normal_answers=self`).\n"
        "- Content warning: real user prompts; some mention sex, drugs or violence in non-harmful senses.\n"
    )
    return BuiltFile("toxicchat_benign.jsonl", rows, credits), pool


# ================================================================================================
# TOFU (fictitious authors)
# ================================================================================================

TOFU_DIR = "tofu"
TOFU_QA_PER_AUTHOR = 20
TOFU_PERTURBED_FIELDS = ("paraphrased_answer", "perturbed_answer", "paraphrased_question")


def build_tofu(data_dir: Path) -> list[BuiltFile]:
    """TOFU in one xz-compressed JSON Lines file (the benchmark's splits are slices of ``full``).

    Rows: the 4,000 fictitious-author QA pairs of ``full.json`` in order (``set`` = fictitious, ``author`` =
    row // 20), the paraphrased/perturbed answers merged into the rows that have them (forget10 = the last
    400 rows, retain_perturbed = the first 400), then real_authors and world_facts with their perturbed
    answers. forgetXX / retainXX / the perturbed files are checked to be exactly those slices, so nothing
    is lost by not shipping them.
    """
    folder = data_dir / TOFU_DIR

    def read(name: str) -> list[dict]:
        return read_jsonl(folder / f"{name}.json")

    full = read("full")
    forget10_perturbed, retain_perturbed = read("forget10_perturbed"), read("retain_perturbed")
    for split, authors in (("forget01", 2), ("forget05", 10), ("forget10", 20)):
        rows = authors * TOFU_QA_PER_AUTHOR
        assert read(split) == full[-rows:], f"TOFU {split} is not the last {authors} authors of full"
        assert read(f"retain{100 - int(split[-2:])}") == full[:-rows], f"TOFU retain of {split} is not the rest of full"
        assert read(f"{split}_perturbed") == forget10_perturbed[-rows:], f"TOFU {split}_perturbed is not a tail of forget10's"
    rows = [{"set": "fictitious", "author": i // TOFU_QA_PER_AUTHOR, "question": r["question"], "answer": r["answer"]}
            for i, r in enumerate(full)]
    offset = len(full) - len(forget10_perturbed)
    for start, extra in ((0, retain_perturbed), (offset, forget10_perturbed)):
        for i, row in enumerate(extra):
            target = rows[start + i]
            assert (row["question"], row["answer"]) == (target["question"], target["answer"]), f"TOFU perturbed row {i} misaligned"
            target.update({key: row[key] for key in TOFU_PERTURBED_FIELDS})
    for name in ("real_authors", "world_facts"):
        rows.extend({"set": name, "question": r["question"], "answer": r["answer"], "perturbed_answer": r["perturbed_answer"]}
                    for r in read(f"{name}_perturbed"))
    hashes = ", ".join(f"`{p.name}` {sha256_of(p)[:16]}" for p in sorted(folder.glob("*.json")))
    credits = (
        "- Source: TOFU (locuslab/tofu; the HF dataset locuslab/TOFU), as staged from OPTML-Group/Unlearn-Simple @ "
        "f1a355d3cb16cdaa2dfbda163a2e954c67886a4c, `TOFU/TOFU_data/` (local `tofu/`; sha256 prefixes: "
        f"{hashes}).\n"
        "- Paper: Maini, Feng, Schwarzschild, Lipton, Kolter, *TOFU: A Task of Fictitious Unlearning for LLMs* (COLM 2024, "
        "arXiv:2401.06121).\n"
        "- License: MIT (\"Copyright (c) 2024 CMU Locus Lab\"; Unlearn-Simple MIT, \"Copyright (c) 2024 JC Liu\").\n"
        "- How it was made: `full.json` (200 fictitious authors x 20 QA, in order) with `set` = fictitious and `author` = "
        "row // 20; `paraphrased_answer`, `perturbed_answer` (5) and `paraphrased_question` merged in from "
        "`forget10_perturbed.json` (the last 400 rows) and `retain_perturbed.json` (the first 400 rows); then "
        "`real_authors_perturbed.json` (100) and `world_facts_perturbed.json` (117) with `set` = real_authors / world_facts "
        "and 3 perturbed answers each. The builder checks that forget01/05/10 are the last 2/10/20 authors of full, "
        "retain99/95/90 the rest, and the forget01/05 perturbed files tails of forget10's, so "
        "`unlearnkit.builtin.datasets.tofu_rows` rebuilds every split exactly. xz-compressed to keep the package small.\n"
        "- Content warning: none (invented biographies; real authors and world-facts questions).\n"
    )
    return [BuiltFile("tofu.jsonl.xz", rows, credits)]


# ================================================================================================
# Output
# ================================================================================================

CREDITS_HEADER = """# Credits for the vendored datasets

These small files are subsets of public datasets, vendored so that unlearnkit runs offline.
They are generated by `scripts/build_builtin_data.py` (deterministic; re-run it to rebuild) and keep the
license of their source, which is NOT necessarily the package's Apache-2.0 license. In particular the
PKU-SafeRLHF subsets are CC-BY-NC-4.0 (non-commercial). Every row is one JSON object per line with a `question`
string and an `answer` string, except the prompt-only `xstest_safe.jsonl`, `toxicchat_benign.jsonl`, `guard_benign.jsonl`, `aegis_benign.jsonl` and `lookalike_safe.jsonl` and the answer-only `truthfulqa_answers.jsonl`.

| file | rows | bytes | license |
|---|---:|---:|---|
"""

LICENSES = {
    "pku_harmful": "CC-BY-NC-4.0",
    "truthfulqa": "Apache-2.0",
    "halueval": "MIT",
    "gutenberg_alice": "Public domain (US)",
    "gutenberg_austen": "Public domain (US)",
    "advbench_harmful_train": "AdvBench questions MIT; answers: no license (research use)",
    "advbench_heldout": "MIT",
    "selfinstruct_benign": "Apache-2.0",
    "xstest_safe": "CC-BY-4.0",
    "alpaca_instructions": "MIT",
    "toxicchat_benign": "CC-BY-NC-4.0",
    "aegis_benign": "CC-BY-4.0",
    "lookalike_safe": "Apache-2.0",
    "guard_benign": "MIT (Alpaca rows) / CC-BY-NC-4.0 (ToxicChat rows)",
    "tofu": "MIT",
}


def license_of(filename: str) -> str:
    return next(license for prefix, license in LICENSES.items() if filename.startswith(prefix))


def write_outputs(files: list[BuiltFile], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for built in files:
        payload = to_jsonl(built.rows).encode("utf-8")
        if built.filename.endswith(".xz"):
            # xz has no timestamp in its header, so the compressed bytes are deterministic too.
            payload = lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME)
        (out_dir / built.filename).write_bytes(payload)
        built.size_bytes = len(payload)

    table = "".join(
        f"| `{b.filename}` | {len(b.rows)} | {b.size_bytes:,} | {license_of(b.filename)} |\n" for b in files
    )
    sections = []
    seen_credits: dict[str, list[str]] = {}
    for built in files:  # files sharing a source share one section
        seen_credits.setdefault(built.credits, []).append(built.filename)
    for credits, filenames in seen_credits.items():
        title = ", ".join(f"`{name}`" for name in filenames)
        rows = ", ".join(f"{name}: {len(b.rows)} rows" for b in files for name in filenames if b.filename == name)
        sections.append(f"## {title}\n\n- Rows: {rows}.\n{credits}")
    credits_text = CREDITS_HEADER + table + "\n" + "\n".join(sections)
    (out_dir / "CREDITS.md").write_text(credits_text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="raw datasets (../shared/data)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where the JSONL files go")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"data dir {args.data_dir} does not exist; pass --data-dir pointing at shared/data")

    files = build_pku(args.data_dir) + build_truthfulqa(args.data_dir) + build_halueval(args.data_dir) + build_alice(
        args.data_dir
    ) + build_austen(args.data_dir) + build_advbench(args.data_dir) + build_utility(args.data_dir) + build_tofu(args.data_dir)
    write_outputs(files, args.out_dir)
    total = sum(b.size_bytes for b in files) + (args.out_dir / "CREDITS.md").stat().st_size
    for built in files:
        print(f"{built.filename:30s} {len(built.rows):5d} rows {built.size_bytes:9,d} bytes")
    print(f"{'total (with CREDITS.md)':30s} {'':10s} {total:9,d} bytes -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
