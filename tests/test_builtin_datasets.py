"""Tests for unlearnkit.builtin.datasets and the vendored JSONL files it serves.

Checks that read the raw datasets (../shared/data beside the repository) skip when that folder is absent.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest

from unlearnkit.builtin.datasets import (
    BUILTIN_DATASETS,
    DATA_DIR,
    BuiltinDataset,
    builtin_dataset_names,
    builtin_dataset_path,
    load_builtin_dataset,
)
from unlearnkit.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TRUTHFULQA_ROWS = 817


def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"raw datasets not found at {SHARED_DATA}")
    return SHARED_DATA


def questions(name: str) -> set[str]:
    return {row["question"] for row in load_builtin_dataset(name)}


PROMPT_ONLY = {"xstest_safe", "toxicchat_benign", "guard_benign", "aegis_benign", "lookalike_safe"}
ANSWER_ONLY = {"truthfulqa_answers"}  # a pool of answers (the official random-mismatch pool)


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_every_dataset_loads_with_nonempty_question_and_answer(name: str) -> None:
    rows = load_builtin_dataset(name)
    assert len(rows) >= 50
    for row in rows:
        if name in ANSWER_ONLY:
            assert "question" not in row and row["answer"].strip() == row["answer"] != ""
            continue
        assert isinstance(row["question"], str) and row["question"].strip() == row["question"] != ""
        if name in PROMPT_ONLY:
            assert "answer" not in row
        else:
            assert isinstance(row["answer"], str) and row["answer"].strip() == row["answer"] != ""


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def test_utility_sets_are_what_they_claim_and_disjoint_from_every_training_pool() -> None:
    benign = load_builtin_dataset("selfinstruct_benign")
    xstest = load_builtin_dataset("xstest_safe")
    assert len(benign) == 175 and len(xstest) == 250
    assert {row["type"] for row in xstest} >= {"homonyms", "safe_targets", "definitions"}
    assert not any(row["type"].startswith("contrast") for row in xstest)  # only the safe half of XSTest
    eval_prompts = {normalized(row["question"]) for row in benign + xstest}
    for pool in ("alpaca_instructions", "toxicchat_benign", "aegis_benign", "lookalike_safe", "truthfulqa_train", "advbench_harmful_train", "pku_harmful_train", "halueval_train"):
        assert not eval_prompts & {normalized(q) for q in questions(pool)}, pool
    families = {name: BUILTIN_DATASETS[name].family for name in ("truthfulqa_train", "truthfulqa_test", "advbench_heldout",
                                                                  "advbench_harmful_train", "selfinstruct_benign")}
    assert families["truthfulqa_train"] == families["truthfulqa_test"] != families["selfinstruct_benign"]
    assert families["advbench_heldout"] == families["advbench_harmful_train"]


def test_guard_set_shares_no_prompt_with_any_other_shipped_file() -> None:
    guard = load_builtin_dataset("guard_benign")
    assert len(guard) == 64 and [row["source"] for row in guard[:4]] == ["alpaca", "toxicchat", "alpaca", "toxicchat"]
    prompts = {normalized(row["question"]) for row in guard}
    assert len(prompts) == 64
    for name in BUILTIN_DATASETS:
        if name not in ("guard_benign", "truthfulqa_answers"):
            assert not prompts & {normalized(q) for q in questions(name)}, name
    assert BUILTIN_DATASETS["guard_benign"].family not in {BUILTIN_DATASETS[n].family for n in BUILTIN_DATASETS if n != "guard_benign"}


def test_registry_matches_the_files_on_disk() -> None:
    shipped = {path.stem for path in DATA_DIR.glob("*.jsonl")}
    views = {name for name, dataset in BUILTIN_DATASETS.items() if dataset.view}
    assert shipped == set(BUILTIN_DATASETS) - views
    assert builtin_dataset_names() == sorted(shipped | views)
    for name, dataset in BUILTIN_DATASETS.items():
        assert isinstance(dataset, BuiltinDataset)
        assert dataset.name == name and (dataset.view or dataset.filename == f"{name}.jsonl")
        assert builtin_dataset_path(name) == DATA_DIR / dataset.filename
        assert dataset.description and dataset.license and dataset.source
        # Every shipped file is credited.
        assert f"`{dataset.filename}`" in (DATA_DIR / "CREDITS.md").read_text(encoding="utf-8")


def test_folder_stays_small() -> None:
    total = sum(path.stat().st_size for path in DATA_DIR.iterdir())
    # 2.0 MB of JSONL plus TOFU (tofu.jsonl.xz, 394 KB xz-compressed, the whole benchmark): 2,098,262 bytes with gutenberg_austen.
    assert total < 2_100_000


def test_builtin_dataset_is_frozen() -> None:
    with pytest.raises(AttributeError):
        BUILTIN_DATASETS["truthfulqa_train"].filename = "other.jsonl"  # type: ignore[misc]


def test_unknown_name_raises_user_error_listing_known_names() -> None:
    with pytest.raises(UserError, match="unknown builtin dataset 'nope'") as caught:
        load_builtin_dataset("nope")
    assert "pku_harmful_train" in str(caught.value) and "gutenberg_alice" in str(caught.value)
    with pytest.raises(UserError):
        builtin_dataset_path("truthfulqa")


@pytest.mark.parametrize(
    "splits",
    [
        ("pku_harmful_train", "pku_harmful_test"),
        ("truthfulqa_train", "truthfulqa_val", "truthfulqa_test"),
        ("halueval_train", "halueval_test"),
    ],
)
def test_splits_are_disjoint_by_question(splits: tuple[str, ...]) -> None:
    for first, second in combinations(splits, 2):
        assert not questions(first) & questions(second), (first, second)
    for name in splits:  # one row per question inside a split too
        assert len(questions(name)) == len(load_builtin_dataset(name))


def test_truthfulqa_split_is_70_10_20_of_817() -> None:
    sizes = [len(load_builtin_dataset(f"truthfulqa_{split}")) for split in ("train", "val", "test")]
    assert sum(sizes) == TRUTHFULQA_ROWS
    # 0.7 * 817 = 571.9, 0.1 * 817 = 81.7, 0.2 * 817 = 163.4: each within one row (two for the remainder).
    for size, share, slack in zip(sizes, (0.7, 0.1, 0.2), (1, 1, 2)):
        assert abs(size - share * TRUTHFULQA_ROWS) <= slack, sizes


def test_pku_sizes_and_halueval_fields() -> None:
    assert len(load_builtin_dataset("pku_harmful_train")) == 200
    assert len(load_builtin_dataset("pku_harmful_test")) == 100
    for name in ("halueval_train", "halueval_test"):
        for row in load_builtin_dataset(name):
            assert set(row) == {"question", "answer", "right_answer", "knowledge"}
            assert row["answer"] != row["right_answer"]  # the answer to forget is the hallucination


@pytest.mark.parametrize("split", ["train", "test"])
def test_grounded_halueval_puts_the_knowledge_before_the_same_question(split: str) -> None:
    plain, grounded = load_builtin_dataset(f"halueval_{split}"), load_builtin_dataset(f"halueval_grounded_{split}")
    assert len(plain) == len(grounded)
    for before, after in zip(plain, grounded):
        assert after["question"] == (f"Using the text below, answer the question.\n\nText: {before['knowledge']}"
                                     f"\n\nQuestion: {before['question']}")
        assert after["plain_question"] == before["question"]
        assert (after["answer"], after["right_answer"]) == (before["answer"], before["right_answer"])
    assert BUILTIN_DATASETS[f"halueval_grounded_{split}"].family == BUILTIN_DATASETS[f"halueval_{split}"].family


def test_pku_prompts_are_disjoint_from_the_judge_benchmarks() -> None:
    guard = shared_data() / "guard-benchmarks"
    judge_prompts = set()
    for filename in ("pku_saferlhf_test_response_labels.jsonl", "beavertails_30k_test_response_labels.jsonl"):
        with (guard / filename).open(encoding="utf-8") as handle:
            judge_prompts.update(json.loads(line)["prompt"].strip() for line in handle if line.strip())
    assert len(judge_prompts) > 2500  # the files were really read
    for name in ("pku_harmful_train", "pku_harmful_test"):
        assert not questions(name) & judge_prompts


def test_pku_answers_are_the_unsafe_responses() -> None:
    pairs_file = shared_data() / "pku-saferlhf-pairs" / "pku_saferlhf_test_safe_unsafe_pairs_5k.json"
    unsafe = {}
    for pair in json.loads(pairs_file.read_text(encoding="utf-8")):
        unsafe.setdefault(pair["prompt"].strip(), set()).add(pair["response"][1].strip())
    for name in ("pku_harmful_train", "pku_harmful_test"):
        for row in load_builtin_dataset(name):
            assert row["answer"] in unsafe.get(row["question"], set()), row["question"]


def test_truthfulqa_answers_are_the_best_answers() -> None:
    import pandas as pd

    frame = pd.read_csv(shared_data() / "truthfulqa" / "TruthfulQA.csv", dtype=str, keep_default_na=False)
    best = {q.strip(): a.strip() for q, a in zip(frame["Question"], frame["Best Answer"])}
    rows = [row for split in ("train", "val", "test") for row in load_builtin_dataset(f"truthfulqa_{split}")]
    assert {row["question"] for row in rows} == set(best)
    assert all(row["answer"] == best[row["question"]] for row in rows)


def test_alice_rows_are_consecutive_chunks_of_the_book() -> None:
    rows = load_builtin_dataset("gutenberg_alice")
    assert len(rows) == 150
    chapters = [row["chapter"] for row in rows]
    assert chapters[0] == 1 and chapters == sorted(chapters)  # reading order from chapter I
    for row in rows:
        assert len(row["question"]) <= 200 and len(row["answer"]) <= 400
        assert len(row["question"]) >= 150 and len(row["answer"]) >= 300  # only full chunks
    # Whitespace-insensitive comparison against the raw text: chunk i+1 starts where chunk i ends.
    book = (shared_data() / "gutenberg" / "pg11.txt").read_text(encoding="utf-8").replace("[Illustration]", "")
    flat_book = " ".join(book.split())
    position = flat_book.index("Alice was beginning to get very tired")
    for previous, row in zip([None, *rows], rows):
        chunk = " ".join(f"{row['question']} {row['answer']}".split())
        found = flat_book.index(chunk, position)
        if previous is not None and previous["chapter"] == row["chapter"]:
            assert found == position, "consecutive chunks of one chapter must be adjacent"
        position = found + len(chunk) + 1  # +1: the space that separated the chunks


def test_austen_rows_are_chunks_of_another_book_without_illustrations() -> None:
    """gutenberg_austen (the copyright mismatch pool): Pride and Prejudice cut as Alice is, illustration captions
    removed, and no text in common with the book the scenario forgets."""
    rows = load_builtin_dataset("gutenberg_austen")
    assert len(rows) == 100 and rows[0]["chapter"] == 2
    raw = (shared_data() / "gutenberg" / "pg1342.txt").read_text(encoding="utf-8")
    # The book without its illustration blocks (captions may hold one nested [...] credit line).
    book = " ".join(re.sub(r"\[Illustration(?:[^\[\]]|\[[^\[\]]*\])*\]", " ", raw).split())
    alice = {row["question"] for row in load_builtin_dataset("gutenberg_alice")} | {row["answer"] for row in load_builtin_dataset("gutenberg_alice")}
    for row in rows:
        assert len(row["question"]) <= 200 and 300 <= len(row["answer"]) <= 400
        assert "Illustration" not in row["question"] + row["answer"] and "Copyright 1894" not in row["answer"]
        assert " ".join(row["answer"].split()) in book
        assert row["question"] not in alice and row["answer"] not in alice


def test_prefixes_end_at_word_boundaries() -> None:
    book = (shared_data() / "gutenberg" / "pg11.txt").read_text(encoding="utf-8")
    flat_book = " ".join(book.split())
    for row in load_builtin_dataset("gutenberg_alice")[:40]:
        # The prefix is followed by whitespace in the book, i.e. it does not end mid-word.
        assert re.search(re.escape(" ".join(row["question"].split())) + r" ", flat_book)


def test_build_script_reproduces_the_shipped_files(tmp_path: Path) -> None:
    data_dir = shared_data()
    script = REPO_ROOT / "scripts" / "build_builtin_data.py"
    subprocess.run(
        [sys.executable, str(script), "--data-dir", str(data_dir), "--out-dir", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shipped = sorted(path.name for path in DATA_DIR.iterdir() if path.is_file())
    assert sorted(path.name for path in tmp_path.iterdir()) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), name


def test_grounded_hallucination_set_scores_against_the_bare_question() -> None:
    # The closeness metric ignores the question's words; with the knowledge passage in the prompt those words include
    # the right answer itself ("... the 1980s television series "21 Jump Street" ..."), which would make a right
    # answer side with neither. The grounded set keeps the bare questions for scoring.
    from unlearnkit.evaluate.metrics import RIGHT, answer_closeness
    from unlearnkit.evaluate.run import hallucination_set

    grounded, plain = hallucination_set("halueval_grounded_test", 3), hallucination_set("halueval_test", 3)
    assert grounded.plain_questions == plain.questions and plain.plain_questions is None
    right = grounded.answers[0]
    answer = f"It is {right}."
    assert right.lower() in grounded.questions[0].lower()  # the passage holds the answer
    assert answer_closeness(answer, right, grounded.hallucinated[0], grounded.plain_questions[0]) == RIGHT
    assert answer_closeness(answer, right, grounded.hallucinated[0], grounded.questions[0]) != RIGHT  # the bug it avoids
