"""Small datasets that ship inside unlearnkit, so every scenario runs offline.

What ships (JSON Lines in ``unlearnkit/builtin/data/``, one ``{"question", "answer", ...}`` object per line):

- ``pku_harmful_train`` / ``pku_harmful_test``: PKU-SafeRLHF prompts with an UNSAFE answer (the text to
  forget; the paper's harmful scenario), split by prompt and disjoint from the prompts that train the
  builtin harm judge. CC-BY-NC-4.0 (non-commercial). Contains offensive and harmful text.
- ``truthfulqa_train`` / ``truthfulqa_val`` / ``truthfulqa_test``: TruthfulQA question + best answer, the
  normal (retain) data, 70/10/20. Apache-2.0.
- ``truthfulqa_answers``: every best, correct and incorrect answer of the train split's questions (the
  paper's official random-mismatch pool). Apache-2.0.
- ``halueval_train`` / ``halueval_test``: HaluEval QA with the hallucinated answer as ``answer`` (to forget)
  plus ``right_answer`` and ``knowledge``. MIT.
- ``halueval_grounded_train`` / ``halueval_grounded_test``: the same rows with HaluEval's ``knowledge`` passage put
  in the prompt ("Using the text below, answer the question. Text: ... Question: ..."), as HaluEval's own QA
  task gives it: hallucination unlearning on questions the model can answer from the text, so that right
  answers can be kept. Views of the files above (no extra file). MIT.
- ``selfinstruct_benign``: the 175 Self-Instruct seed instructions with a human reference answer; benign
  prompts that no preset trains on, for measuring utility. Apache-2.0.
- ``xstest_safe``: XSTest's 250 safe prompts that merely look unsafe ("How can I kill a Python process?"),
  prompt-only, for measuring over-refusal. CC-BY-4.0.
- ``alpaca_instructions``: 600 Alpaca-style everyday instructions (HaluEval general_data, non-hallucinated
  ChatGPT answers), disjoint from the Self-Instruct seeds: a benign pool for normal data. MIT.
- ``toxicchat_benign``: 400 real user prompts that ToxicChat's annotators labelled unharmful (short, English),
  prompt-only: a pool of everyday requests for normal data answered by the model itself. CC-BY-NC-4.0.
- ``guard_benign``: 64 everyday prompts (32 Alpaca instructions, 32 real ToxicChat requests labelled unharmful)
  that no other shipped file holds: the validation set of the training utility guard (``guard_set``),
  disjoint from every evaluation set and training pool. Prompt-only. MIT (Alpaca rows) / CC-BY-NC-4.0 (ToxicChat rows).
- ``gutenberg_alice``: consecutive passages of *Alice's Adventures in Wonderland* as (prefix ``question``,
  continuation ``answer``, ``chapter``) for the copyright / memorization scenario and extraction prompts.
  Public domain (US).
- ``gutenberg_austen``: *Pride and Prejudice* passages cut the same way: prose that is not the book being
  forgotten, the copyright scenario's random-mismatch pool (``mismatch_pool=gutenberg_austen``). Public domain (US).

Sources, upstream commits, licenses, row counts and how each file was made are in ``data/CREDITS.md``;
the files are rebuilt deterministically by ``scripts/build_builtin_data.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.errors import UserError

# A plain folder next to this module: works from a source checkout and from an installed wheel
# (package-data ``builtin/data/*``), without importlib.resources' namespace-package corner cases.
DATA_DIR = Path(__file__).resolve().parent / "data"
CREDITS_FILE = DATA_DIR / "CREDITS.md"


@dataclass(frozen=True)
class BuiltinDataset:
    """One vendored JSONL file and what a user needs to know before using it."""

    name: str
    filename: str
    description: str
    license: str
    source: str
    family: str  # datasets of one family share a distribution (e.g. truthfulqa_train / truthfulqa_test)
    view: str = ""  # a name in VIEWS: the rows are another dataset's file, reshaped (no file of its own)


_PKU = "PKU-SafeRLHF test split (Dai et al. 2023; Ji et al. 2023) via xinykou/safety_realignment"
_TRUTHFULQA = "TruthfulQA (Lin, Hilton, Evans 2022), TruthfulQA.csv"
_HALUEVAL = "HaluEval QA (Li et al. 2023), first 1,000 rows of data/qa_data.json"
_ADVBENCH = "AdvBench harmful_behaviors.csv (Zou et al. 2023)"
_ADVBENCH_SU = "thu-coai/SafeUnlearning (Zhang et al. 2024) harmful answers to AdvBench questions"
_SELF_INSTRUCT = "Self-Instruct seed tasks (Wang et al. 2023) via tatsu-lab/stanford_alpaca"
_XSTEST = "XSTest (Röttger et al. 2024), xstest_prompts.csv"
_ALPACA = "HaluEval general_data.json (Li et al. 2023): Alpaca instructions with ChatGPT answers"
_TOXICCHAT = "ToxicChat test split (Lin et al. 2023), unharmful user prompts"
_AEGIS = "Aegis AI Content Safety (Ghosh et al. 2024), test prompts labelled unharmful"
_LOOKALIKE = "written for unlearnkit: safe prompts in harmful words (XSTest's categories, not its prompts)"
_GUARD = "HaluEval general_data.json (Alpaca instructions) and ToxicChat test split (unharmful prompts): rows no other file holds"
_ALICE = "Lewis Carroll, Alice's Adventures in Wonderland, Project Gutenberg eBook #11"
_AUSTEN = "Jane Austen, Pride and Prejudice, Project Gutenberg eBook #1342"


def _entry(name: str, description: str, license: str, source: str, family: str = "", *,
           view_of: str = "", view: str = "") -> tuple[str, BuiltinDataset]:
    family = family or (name.rsplit("_", 1)[0] if name.endswith(("_train", "_val", "_test")) else name)
    return name, BuiltinDataset(name, f"{view_of or name}.jsonl", description, license, source, family, view)


GROUNDED_PROMPT = "Using the text below, answer the question.\n\nText: {knowledge}\n\nQuestion: {question}"


def _grounded(row: dict[str, Any]) -> dict[str, Any]:
    """A HaluEval row with its knowledge passage in the prompt (HaluEval's QA setting); the bare question is kept
    as ``plain_question``."""
    return {**row, "question": GROUNDED_PROMPT.format(knowledge=row["knowledge"], question=row["question"]),
            "plain_question": row["question"]}


VIEWS = {"grounded": _grounded}


BUILTIN_DATASETS: dict[str, BuiltinDataset] = dict(
    [
        _entry(
            "pku_harmful_train",
            "harmful prompts with an unsafe answer to forget (forget set; offensive content)",
            "CC-BY-NC-4.0",
            _PKU,
        ),
        _entry(
            "pku_harmful_test",
            "held-out harmful prompts (other prompts than the train split) with an unsafe answer",
            "CC-BY-NC-4.0",
            _PKU,
        ),
        _entry(
            "truthfulqa_train", "normal Q&A: question + best answer (retain set), 70% split", "Apache-2.0", _TRUTHFULQA
        ),
        _entry("truthfulqa_val", "normal Q&A: question + best answer, 10% validation split", "Apache-2.0", _TRUTHFULQA),
        _entry("truthfulqa_test", "normal Q&A: question + best answer, 20% test split", "Apache-2.0", _TRUTHFULQA),
        _entry("truthfulqa_answers", "the official code's random-mismatch pool: best, correct and incorrect answers of the "
               "train split's questions", "Apache-2.0", _TRUTHFULQA, family="truthfulqa"),
        _entry(
            "halueval_train",
            "questions with a hallucinated answer to forget, plus right_answer and knowledge",
            "MIT",
            _HALUEVAL,
        ),
        _entry(
            "halueval_test",
            "held-out questions with a hallucinated answer, plus right_answer and knowledge",
            "MIT",
            _HALUEVAL,
        ),
        _entry("halueval_grounded_train", "halueval_train with its knowledge passage in the prompt (grounded QA; forget set)",
               "MIT", _HALUEVAL, family="halueval", view_of="halueval_train", view="grounded"),
        _entry("halueval_grounded_test", "halueval_test with its knowledge passage in the prompt (grounded QA; held-out)",
               "MIT", _HALUEVAL, family="halueval", view_of="halueval_test", view="grounded"),
        _entry(
            "gutenberg_alice",
            "book passages split into prefix (question) and continuation (answer), with chapter",
            "Public domain (US)",
            _ALICE,
        ),
        _entry("gutenberg_austen", "passages of another book cut the same way: prose that is not the book to forget "
               "(copyright mismatch pool, mismatch_pool=gutenberg_austen)", "Public domain (US)", _AUSTEN),
        _entry(
            "advbench_harmful_train",
            "100 AdvBench harmful requests with an uncensored model's harmful answer (forget set; harmful content)",
            "questions MIT (AdvBench); answers have no license (thu-coai/SafeUnlearning): research use",
            _ADVBENCH_SU,
            family="advbench",
        ),
        _entry(
            "advbench_heldout",
            "100 other AdvBench harmful requests (held-out prompts) with AdvBench's affirmative target as answer",
            "MIT",
            _ADVBENCH,
            family="advbench",
        ),
        _entry("selfinstruct_benign", "175 benign instructions with a reference answer (utility eval; never trained on)",
               "Apache-2.0", _SELF_INSTRUCT),
        _entry("xstest_safe", "250 safe prompts that look unsafe, prompt-only (over-refusal eval)", "CC-BY-4.0", _XSTEST),
        _entry("alpaca_instructions", "600 everyday instructions with ChatGPT answers (benign normal-data pool)", "MIT", _ALPACA),
        _entry("toxicchat_benign", "400 real user prompts labelled unharmful, prompt-only (normal pool for normal_answers=self)",
               "CC-BY-NC-4.0", _TOXICCHAT),
        _entry("aegis_benign", "105 real user prompts labelled unharmful that touch harmful topics, prompt-only (normal pool "
               "on the border of the forget set)", "CC-BY-4.0", _AEGIS),
        _entry("lookalike_safe", "99 safe prompts that borrow harmful words (homonyms, games, definitions, history), "
               "prompt-only (normal pool on the border of the forget set; never an eval set)", "Apache-2.0", _LOOKALIKE),
        _entry("guard_benign", "64 everyday prompts (Alpaca + ToxicChat) held out of every other file, prompt-only (the training "
               "utility guard's validation set)", "MIT (Alpaca rows) / CC-BY-NC-4.0 (ToxicChat rows)", _GUARD),
    ]
)


def builtin_dataset_names() -> list[str]:
    """Names of the shipped datasets, sorted."""
    return sorted(BUILTIN_DATASETS)


def _lookup(name: str) -> BuiltinDataset:
    try:
        return BUILTIN_DATASETS[name]
    except KeyError:
        raise UserError(
            f"unknown builtin dataset '{name}'; choose one of: {', '.join(builtin_dataset_names())}"
        ) from None


def builtin_dataset_path(name: str) -> Path:
    """Path of the JSONL file of builtin dataset ``name``; UserError for an unknown name."""
    return DATA_DIR / _lookup(name).filename


def load_builtin_dataset(name: str) -> list[dict[str, Any]]:
    """All rows of builtin dataset ``name`` (a fresh list of dicts, file order).

    Every row has a non-empty ``question`` and (except prompt-only ``xstest_safe``, ``toxicchat_benign`` and ``guard_benign``) ``answer``; some datasets add fields
    (``right_answer``/``knowledge`` for HaluEval, ``chapter`` for Gutenberg).
    """
    path = builtin_dataset_path(name)
    if not path.is_file():
        raise UserError(
            f"builtin dataset file {path} is missing; reinstall unlearnkit or run scripts/build_builtin_data.py"
        )
    with path.open(encoding="utf-8") as handle:
        # Iterating a text file splits on "\n" only, which is how the builder writes rows.
        rows = [json.loads(line) for line in handle if line.strip()]
    view = BUILTIN_DATASETS[name].view
    return [VIEWS[view](row) for row in rows] if view else rows


# ----------------------------------------------------------------------------------------------- TOFU
TOFU_FILE = DATA_DIR / "tofu.jsonl.xz"
TOFU_QA_PER_AUTHOR = 20
TOFU_AUTHORS = 200
TOFU_FORGET_AUTHORS = {"forget01": 2, "forget05": 10, "forget10": 20}
TOFU_RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
TOFU_SPLITS = ("full", *TOFU_FORGET_AUTHORS, *TOFU_RETAIN_OF.values(), *(f"{s}_perturbed" for s in TOFU_FORGET_AUTHORS),
               "retain_perturbed", "real_authors", "world_facts")
TOFU_CREDIT = "TOFU (Maini et al. 2024, arXiv:2401.06121; locuslab/tofu), MIT; see builtin/data/CREDITS.md"


def _tofu_all_rows() -> list[dict[str, Any]]:
    import lzma

    if not TOFU_FILE.is_file():
        raise UserError(f"builtin TOFU file {TOFU_FILE} is missing; reinstall unlearnkit or run scripts/build_builtin_data.py")
    with lzma.open(TOFU_FILE, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def tofu_rows(split: str) -> list[dict[str, Any]]:
    """Rows of a TOFU split, rebuilt from the vendored file exactly as the benchmark defines it.

    ``full`` (4,000 fictitious-author QA, ``author`` 0-199, 20 rows each); ``forget01/05/10`` = the last
    2/10/20 authors; ``retain99/95/90`` = the rest; ``forgetXX_perturbed`` = the forget rows (each with
    ``paraphrased_answer``, 5 ``perturbed_answer`` and ``paraphrased_question``); ``retain_perturbed`` = the
    400 rows of authors 0-19 with the same fields; ``real_authors`` / ``world_facts`` (``perturbed_answer``: 3).
    """
    if split not in TOFU_SPLITS:
        raise UserError(f"unknown TOFU split '{split}'; choose one of: {', '.join(TOFU_SPLITS)}")
    rows = _tofu_all_rows()
    if split in ("real_authors", "world_facts"):
        return [r for r in rows if r["set"] == split]
    fictitious = [r for r in rows if r["set"] == "fictitious"]
    if split == "full":
        return fictitious
    if split == "retain_perturbed":
        return [r for r in fictitious if "perturbed_answer" in r and r["author"] < TOFU_AUTHORS - max(TOFU_FORGET_AUTHORS.values())]
    name = split.removesuffix("_perturbed")
    if name in TOFU_FORGET_AUTHORS:
        return [r for r in fictitious if r["author"] >= TOFU_AUTHORS - TOFU_FORGET_AUTHORS[name]]
    forget = next(f for f, r in TOFU_RETAIN_OF.items() if r == name)
    return [r for r in fictitious if r["author"] < TOFU_AUTHORS - TOFU_FORGET_AUTHORS[forget]]
