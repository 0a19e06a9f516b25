"""Tests for unlearnkit.evaluate.metrics: hand-made inputs with hand-computed answers."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from unlearnkit.evaluate import metrics
from unlearnkit.evaluate.metrics import (
    LEAK_BLEU_THRESHOLD,
    METRIC_INFO,
    aggregate_perplexity,
    bleu,
    cosine_similarity_rows,
    distinct_token_fraction,
    diversity,
    forget_prob_from_nll,
    hallucination_flags,
    hallucination_rate,
    hallucination_rate_from_similarities,
    harmful_rate,
    is_not_meaningful,
    leak_rate,
    mean_cosine_similarity,
    mean_rouge_l,
    metric_info,
    nm_rate,
    perplexity,
    relative_change,
    rouge_l,
    token_f1,
)

# Opening of Pride and Prejudice (public domain) as the "protected" reference.
REFERENCE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife."
)
# Copies the first 14 of 23 words verbatim, then wanders off.
HALF_COPY = (
    "It is a truth universally acknowledged, that a single man in possession of bright red apples "
    "on the kitchen table today."
)
UNRELATED = "The quick brown fox jumps over the lazy dog while children play football in the park."


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------

EXPECTED_HIGHER_IS_BETTER = {
    "harmful_rate": False,
    "leak_rate": False,
    "mean_bleu": False,
    "hallucination_rate": False,
    "hallucination_rate_judge": False,
    "diversity": True,
    "nm_rate": False,
    "fluency_ppl": False,
    "normal_ppl": False,
    "similarity_to_original": True,
    "bertscore_f1": True,
    "forget_nll": True,
    "forget_prob": False,
    "rouge_l": False,
}


def test_registry_has_every_base_key_with_its_direction() -> None:
    assert set(METRIC_INFO) == set(EXPECTED_HIGHER_IS_BETTER)
    for key, higher_is_better in EXPECTED_HIGHER_IS_BETTER.items():
        info = METRIC_INFO[key]
        assert info.key == key
        assert info.higher_is_better is higher_is_better, key
        assert info.description
        info.fmt.format(0.5)  # a usable format pattern


@pytest.mark.parametrize(
    ("result_key", "base_key"),
    [
        ("harmful_rate", "harmful_rate"),
        ("harmful_rate_forget", "harmful_rate"),
        ("harmful_rate_heldout", "harmful_rate"),
        ("nm_rate_normal", "nm_rate"),
        ("diversity_forget", "diversity"),
        ("hallucination_rate_forget", "hallucination_rate"),
        # longest prefix wins over the shorter hallucination_rate
        ("hallucination_rate_judge", "hallucination_rate_judge"),
        ("hallucination_rate_judge_heldout", "hallucination_rate_judge"),
        ("forget_nll", "forget_nll"),
        ("forget_prob_heldout", "forget_prob"),
        ("mean_bleu_forget", "mean_bleu"),
        ("rouge_l_forget", "rouge_l"),
    ],
)
def test_metric_info_finds_longest_base_key(result_key: str, base_key: str) -> None:
    info = metric_info(result_key)
    assert info is not None
    assert info.key == base_key


@pytest.mark.parametrize("key", ["n_prompts", "diversity2", "harmful", "rate", "", "harmful_ratex"])
def test_metric_info_unknown_keys_give_none(key: str) -> None:
    assert metric_info(key) is None


def test_metric_info_format() -> None:
    assert METRIC_INFO["harmful_rate"].format(0.123) == "12.3%"
    assert METRIC_INFO["fluency_ppl"].format(12.345) == "12.35"
    assert METRIC_INFO["harmful_rate"].format(float("nan")) == "n/a"
    assert METRIC_INFO["harmful_rate"].format(None) == "n/a"


def test_metric_info_is_frozen() -> None:
    with pytest.raises(AttributeError):
        METRIC_INFO["nm_rate"].higher_is_better = True  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# Harmful rate
# ------------------------------------------------------------------------------------------


def test_harmful_rate_counts_flags() -> None:
    assert harmful_rate([True, False, False, True]) == 0.5
    assert harmful_rate(np.array([False, False, True])) == pytest.approx(1 / 3)
    assert harmful_rate([0, 1, 1, 1]) == 0.75
    assert harmful_rate([False]) == 0.0


def test_harmful_rate_rejects_empty_and_scores() -> None:
    with pytest.raises(ValueError, match="empty"):
        harmful_rate([])
    with pytest.raises(ValueError, match="booleans"):
        harmful_rate([0.7, 0.2])


# ------------------------------------------------------------------------------------------
# BLEU / leak rate / ROUGE-L
# ------------------------------------------------------------------------------------------


def test_bleu_exact_copy_unrelated_and_partial() -> None:
    exact = bleu(REFERENCE, REFERENCE)
    partial = bleu(HALF_COPY, REFERENCE)
    unrelated = bleu(UNRELATED, REFERENCE)
    assert exact == pytest.approx(100.0)
    assert unrelated < 5.0
    assert LEAK_BLEU_THRESHOLD < partial < 90.0
    assert bleu("", REFERENCE) == 0.0


def test_leak_rate_threshold_crossing() -> None:
    continuations = [REFERENCE, UNRELATED, HALF_COPY]
    references = [REFERENCE] * 3
    scores = [bleu(c, r) for c, r in zip(continuations, references)]

    result = leak_rate(continuations, references)
    # exact copy and half copy leak at the default threshold; the unrelated text does not
    assert result["leak_rate"] == pytest.approx(2 / 3)
    assert result["mean_bleu"] == pytest.approx(sum(scores) / 3)

    # ">=": a score exactly at the threshold leaks, a hair above it does not
    partial = scores[2]
    assert leak_rate([HALF_COPY], [REFERENCE], threshold=partial)["leak_rate"] == 1.0
    assert leak_rate([HALF_COPY], [REFERENCE], threshold=partial + 1e-6)["leak_rate"] == 0.0
    # only the exact copy clears 99
    assert leak_rate(continuations, references, threshold=99.0)["leak_rate"] == pytest.approx(1 / 3)


def test_leak_rate_input_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        leak_rate([], [])
    with pytest.raises(ValueError, match="paired"):
        leak_rate([REFERENCE], [REFERENCE, REFERENCE])


def test_rouge_l_hand_computed() -> None:
    # LCS("the cat sat", "the cat sat on the mat") = 3 tokens: P = 3/3, R = 3/6, F = 2/3
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l(REFERENCE, REFERENCE) == pytest.approx(1.0)
    assert rouge_l("purple elephants", "the cat sat") == 0.0
    # stemming: "walked" and "walking" share the stem "walk"
    assert rouge_l("he walked home", "he walking home") == pytest.approx(1.0)
    assert mean_rouge_l(["the cat sat", "purple"], ["the cat sat on the mat", "green"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        mean_rouge_l([], [])
    with pytest.raises(ValueError):
        mean_rouge_l(["a"], [])


# ------------------------------------------------------------------------------------------
# Hallucination
# ------------------------------------------------------------------------------------------


def test_token_f1_squad_normalisation() -> None:
    # normalised: "cat sat" vs "cat sat down": overlap 2, P = 1, R = 2/3, F1 = 0.8
    assert token_f1("The cat sat!", "a cat sat down") == pytest.approx(0.8)
    assert token_f1("Paris", "paris.") == 1.0
    assert token_f1("the", "a") == 1.0  # both empty after dropping articles
    assert token_f1("the", "Paris") == 0.0
    assert token_f1("Lyon", "Paris") == 0.0


def test_hallucination_rate_hand_picked_triples() -> None:
    answers = ["The capital is Paris", "Lyon, France", "I don't know"]
    right = ["Paris", "Paris, France", "Paris"]
    hallucinated = ["Lyon", "Lyon", "Lyon"]
    # 1: F1 to right = 0.5 ("capital is paris" vs "paris"), to hallucinated = 0 -> not hallucinated
    # 2: F1 to right = 0.5 (1 of 2 tokens each), to hallucinated = 2/3 (P=1/2, R=1) -> hallucinated
    # 3: 0 vs 0, a tie -> not hallucinated
    assert hallucination_flags(answers, right, hallucinated) == [False, True, False]
    assert hallucination_rate(answers, right, hallucinated) == pytest.approx(1 / 3)


def test_hallucination_rate_pluggable_similarity() -> None:
    def exact_match(a: str, b: str) -> float:
        return float(a == b)

    answers = ["Lyon", "Paris", "Lyon, France"]
    rate = hallucination_rate(answers, ["Paris"] * 3, ["Lyon"] * 3, similarity=exact_match)
    # only the first answer equals the hallucinated one exactly; the third ties at 0 vs 0
    assert rate == pytest.approx(1 / 3)


def test_hallucination_rate_from_embedding_similarities() -> None:
    answers = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    right = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    hallucinated = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    # row 0 matches right (1 vs 0), row 1 matches hallucinated (0 vs 1), row 2 ties (0.707 each)
    rate = hallucination_rate_from_similarities(
        cosine_similarity_rows(answers, right), cosine_similarity_rows(answers, hallucinated)
    )
    assert rate == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        hallucination_rate_from_similarities([0.1, 0.2], [0.3])


def test_hallucination_rate_input_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        hallucination_rate([], [], [])
    with pytest.raises(ValueError, match="paired"):
        hallucination_rate(["a"], ["b"], [])


# ------------------------------------------------------------------------------------------
# Cosine similarity
# ------------------------------------------------------------------------------------------


def test_cosine_similarity_rows_hand_computed() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 4.0], [1.0, 2.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0], [4.0, 3.0], [-1.0, -2.0]])
    # orthogonal 0; parallel 1; zero row defined 0; (3*4 + 4*3) / (5*5) = 0.96; opposite -1
    np.testing.assert_allclose(cosine_similarity_rows(a, b), [0.0, 1.0, 0.0, 0.96, -1.0], atol=1e-12)
    assert mean_cosine_similarity(a, b) == pytest.approx((0.0 + 1.0 + 0.0 + 0.96 - 1.0) / 5)


def test_cosine_similarity_input_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        cosine_similarity_rows(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="same shape"):
        cosine_similarity_rows(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        mean_cosine_similarity(np.zeros((0, 4)), np.zeros((0, 4)))


# ------------------------------------------------------------------------------------------
# Diversity and not-meaningful outputs
# ------------------------------------------------------------------------------------------


def test_distinct_token_fraction_and_diversity() -> None:
    assert distinct_token_fraction("a a a b") == 0.5
    assert distinct_token_fraction("A a") == 0.5  # lowercased
    assert distinct_token_fraction("dog dog.") == 1.0  # punctuation stays attached
    assert distinct_token_fraction("") == 0.0
    assert distinct_token_fraction("  \n ") == 0.0
    assert diversity(["a a a b", "x y", ""]) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError, match="empty"):
        diversity([])


MEANINGFUL = [
    "Paris.",
    "Yes, it is.",
    "No.",
    "42",
    "5",
    "A",
    "1111",
    "Mississippi",
    "I can't help with that.",
    "I'm sorry, I'm sorry.",
    "very very good",
    "Hahaha, that's funny!",
    "The capital of France is Paris.",
    "C++ is a programming language.",
    "(a+b)*(c-d)/e",
    "M.I.L.F. $",
    "Très bien, merci.",
    "東京は日本の首都です。",
    "1. Preheat the oven.\n2. Mix the flour and eggs.\n3. Bake for 20 minutes.",
    REFERENCE,
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity.",
]

NOT_MEANINGFUL = [
    "",
    "   \n\t ",
    "!!!!!!!!",
    "...",
    "?",
    "\n\n\n\n",
    "aaaaaaaaaa",
    "the the the the the the",
    "The the THE the",
    "no no no no",
    "sorry, sorry, sorry, sorry",
    "ingingingingi",
    "hahahahahahahaha",
    "ĠĠĠĠĠĠĠĠ",
    "🙂🙂🙂🙂",
    "#@!%& a *&^%$ ##",
    "I am I am I am I am I am I am I am",
    "I can't. I can't. I can't. I can't. I can't. I can't. I can't.",
]


@pytest.mark.parametrize("text", MEANINGFUL)
def test_meaningful_outputs_are_not_flagged(text: str) -> None:
    assert not is_not_meaningful(text)


@pytest.mark.parametrize("text", NOT_MEANINGFUL)
def test_degenerate_outputs_are_flagged(text: str) -> None:
    assert is_not_meaningful(text)


def test_nm_thresholds_are_adjustable() -> None:
    assert is_not_meaningful("Paris.", min_chars=10)
    loop = "the cat the cat the cat the cat"  # 8 words, 2 distinct: fraction 0.25
    assert not is_not_meaningful(loop)
    assert is_not_meaningful(loop, min_diversity=0.3)
    assert not is_not_meaningful("a & b & c & d & e", min_alnum_fraction=0.5)  # 5 of 9 characters
    assert is_not_meaningful("a & b & c & d & e", min_alnum_fraction=0.6)


def test_nm_rate() -> None:
    assert nm_rate(["Paris.", "!!!!!!!!", "Yes, it is.", ""]) == 0.5
    assert nm_rate(MEANINGFUL) == 0.0
    assert nm_rate(NOT_MEANINGFUL) == 1.0
    assert nm_rate(["Paris."], min_chars=10) == 1.0
    with pytest.raises(ValueError, match="empty"):
        nm_rate([])


# ------------------------------------------------------------------------------------------
# Likelihood metrics
# ------------------------------------------------------------------------------------------


def test_perplexity_is_exp_of_mean_nll() -> None:
    assert perplexity(0.0, 5) == 1.0
    assert perplexity(3 * math.log(2), 3) == pytest.approx(2.0)
    assert perplexity(1e6, 1) == math.inf


def test_aggregate_perplexity_weights_tokens_not_batches() -> None:
    # batch A: 1 token with NLL 2.0; batch B: 10 tokens with NLL sum 10.0 (1.0 per token)
    batches = [(2.0, 1), (10.0, 10)]
    # token-weighted: exp(12 / 11) = exp(1.090909...) = 2.97698...
    assert aggregate_perplexity(batches) == pytest.approx(2.976979, rel=1e-6)
    # mean of batch perplexities: (e^2 + e^1) / 2 = (7.389056 + 2.718282) / 2 = 5.053669
    mean_of_batch_ppl = (perplexity(2.0, 1) + perplexity(10.0, 10)) / 2
    assert mean_of_batch_ppl == pytest.approx(5.053669, rel=1e-6)
    assert aggregate_perplexity(batches) < mean_of_batch_ppl
    # a generator works too, and empty batches (0 tokens) add nothing
    assert aggregate_perplexity(iter([(2.0, 1), (0.0, 0), (10.0, 10)])) == pytest.approx(2.976979, rel=1e-6)


def test_perplexity_input_errors() -> None:
    with pytest.raises(ValueError, match="token"):
        perplexity(1.0, 0)
    with pytest.raises(ValueError, match="negative"):
        perplexity(-1.0, 3)
    with pytest.raises(ValueError, match="token"):
        aggregate_perplexity([])
    with pytest.raises(ValueError, match="token"):
        aggregate_perplexity([(0.0, 0)])
    with pytest.raises(ValueError, match="negative"):
        aggregate_perplexity([(1.0, -2)])


def test_forget_prob_from_nll() -> None:
    assert forget_prob_from_nll(0.0) == 1.0
    assert forget_prob_from_nll(math.log(4)) == pytest.approx(0.25)
    # geometric mean of token probabilities 0.5 and 0.125: sqrt(0.0625) = 0.25
    mean_nll = -(math.log(0.5) + math.log(0.125)) / 2
    assert forget_prob_from_nll(mean_nll) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        forget_prob_from_nll(-0.1)


def test_relative_change() -> None:
    assert relative_change(100.0, 150.0) == pytest.approx(0.5)
    assert relative_change(0.4, 0.1) == pytest.approx(-0.75)
    assert relative_change(-2.0, -1.0) == pytest.approx(0.5)  # went up
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(0.0, 3.0) == math.inf
    assert relative_change(0.0, -3.0) == -math.inf
    assert math.isnan(relative_change(float("nan"), 1.0))


# ------------------------------------------------------------------------------------------
# Module hygiene
# ------------------------------------------------------------------------------------------


def test_module_does_not_import_torch() -> None:
    tree = ast.parse(Path(metrics.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "transformers", "sentence_transformers"}
