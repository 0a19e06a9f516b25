"""Membership-inference scores, AUC and PrivLeak against hand-computed cases."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from unlearnkit.evaluate import mia
from unlearnkit.losses import IGNORE_INDEX


def test_loss_and_min_k_scores() -> None:
    log_probs = [-0.1, -2.0, -0.5, -4.0, -0.2]
    assert mia.loss_score(log_probs) == pytest.approx(-6.8 / 5)
    # k = 0.2 of 5 tokens -> the single lowest; k = 0.4 -> the two lowest; k = 1 -> all (= LOSS).
    assert mia.min_k_score(log_probs, 0.2) == pytest.approx(-4.0)
    assert mia.min_k_score(log_probs, 0.4) == pytest.approx(-3.0)
    assert mia.min_k_score(log_probs, 1.0) == pytest.approx(mia.loss_score(log_probs))
    # ceil: 0.3 of 5 = 1.5 -> 2 tokens; a short answer still keeps one token.
    assert mia.min_k_score(log_probs, 0.3) == pytest.approx(-3.0)
    assert mia.min_k_score([-1.5], 0.2) == pytest.approx(-1.5)
    with pytest.raises(ValueError):
        mia.min_k_score([], 0.2)
    with pytest.raises(ValueError):
        mia.min_k_score(log_probs, 0.0)


def test_zlib_score_divides_mean_log_prob_by_compressed_size() -> None:
    text = "Paris is the capital of France."
    expected = -1.0 / len(zlib.compress(text.encode()))
    assert mia.zlib_score([-0.5, -1.5], text) == pytest.approx(expected)


def test_min_k_plus_plus_standardizes_each_token() -> None:
    log_probs = np.array([-1.0, -3.0, -0.5])
    means = np.array([-2.0, -2.0, -0.5])
    variances = np.array([4.0, 1.0, 0.0])  # a one-hot position: sigma 0 must not divide by zero
    # z = (lp - mu)/sigma = [0.5, -1.0, 0 / tiny = 0]; k = 1/3 of 3 -> the lowest: -1.0; k = 2/3 -> mean(-1, 0) = -0.5.
    assert mia.min_k_plus_plus_score(log_probs, means, variances, 1 / 3) == pytest.approx(-1.0)
    assert mia.min_k_plus_plus_score(log_probs, means, variances, 2 / 3) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        mia.min_k_plus_plus_score(log_probs, means[:2], variances, 0.5)


def test_token_log_prob_stats_matches_a_hand_softmax() -> None:
    # One sequence, 3 positions, vocab 2; position 0 predicts token 1 (label 1), position 1 predicts token 2 (label 0).
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    log_probs, means, variances, valid = mia.token_log_prob_stats(logits, labels)
    assert valid.tolist() == [[True, True]]
    p0, p1 = np.array([0.25, 0.75]), np.array([0.8, 0.2])
    assert log_probs[0].tolist() == pytest.approx([math.log(0.75), math.log(0.8)], abs=1e-6)
    for row, p in ((0, p0), (1, p1)):
        mean = float((p * np.log(p)).sum())
        var = float((p * np.log(p) ** 2).sum() - mean**2)
        assert float(means[0, row]) == pytest.approx(mean, abs=1e-6)
        assert float(variances[0, row]) == pytest.approx(var, abs=1e-6)
    masked = mia.token_log_prob_stats(logits, torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0]]))
    assert masked[3].tolist() == [[False, True]] and float(masked[0][0, 0]) == 0.0


def test_one_hot_distribution_has_zero_variance_not_nan() -> None:
    logits = torch.tensor([[[0.0, -1e9, -1e9], [0.0, 0.0, 0.0]]])
    _, means, variances, _ = mia.token_log_prob_stats(logits, torch.tensor([[IGNORE_INDEX, 0]]))
    assert torch.isfinite(means).all() and torch.isfinite(variances).all()
    assert float(variances[0, 0]) == pytest.approx(0.0, abs=1e-6)


def test_membership_auc_and_privleak() -> None:
    # Pairs member > non-member: 0.9 beats both, 0.8 beats both, 0.3 beats only 0.1 -> 5/6.
    assert mia.membership_auc([0.9, 0.8, 0.3], [0.5, 0.1]) == pytest.approx(5 / 6)
    assert mia.membership_auc([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5)
    assert mia.membership_auc([0.0], [1.0]) == 0.0
    assert mia.priv_leak(0.8, 0.5) == pytest.approx(0.6)
    assert mia.priv_leak(0.5, 0.5) == 0.0
    assert mia.priv_leak(0.25, 0.5) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        mia.membership_auc([], [0.1])


def test_attack_scores_stack_per_attack() -> None:
    stats = [mia.TokenStats(np.array([-1.0, -2.0]), np.array([-1.0, -1.0]), np.array([1.0, 1.0])),
             mia.TokenStats(np.array([-0.5]), np.array([-1.0]), np.array([0.25]))]
    scores = mia.attack_scores(stats, ["ab", "c"], k=0.5)
    assert set(scores) == set(mia.ATTACKS)
    assert scores["loss"].tolist() == pytest.approx([-1.5, -0.5])
    assert scores["min_k"].tolist() == pytest.approx([-2.0, -0.5])
    assert scores["min_k_plus_plus"].tolist() == pytest.approx([-1.0, 1.0])


def test_answer_token_stats_on_a_tiny_model(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnkit.evaluate.generate import score_answers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    questions, answers = ["What is the capital of France?", "How do I pick a lock?"], ["Paris.", "You insert a wrench."]
    stats = mia.answer_token_stats(model, tokenizer, questions, answers, "paper", batch_size=1)
    scores = score_answers(model, tokenizer, questions, answers, "paper")
    # Same tokens as answer scoring: -mean log p == the mean NLL, per answer.
    for s, nll in zip(stats, scores.mean_nll()):
        assert -s.log_probs.mean() == pytest.approx(nll, rel=1e-5)
        assert (s.var_log_probs >= 0).all() and s.log_probs.shape == s.mean_log_probs.shape
