"""Membership inference, PrivLeak and memorization against hand-computed cases and published values.

The definitions are OpenUnlearning's / MUSE's (docs/tofu_mia.md): Min-K% counts max(1, int(k * n))
tokens, the EOS is excluded from Min-K%, Min-K%++, GradNorm, EM and ES but kept in LOSS, ZLib and the
reference attack, the Min-K%++ variance is clamped at 1e-6, ZLib compresses the decoded answer tokens,
and PrivLeak is a percentage on 1 - AUC.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from unlearnkit.evaluate import mia
from unlearnkit.losses import IGNORE_INDEX


def _stats(log_probs, means=None, variances=None, matches=None, text="", ends_with_eos=True) -> mia.TokenStats:
    lp = np.asarray(log_probs, float)
    return mia.TokenStats(lp, np.asarray(means if means is not None else np.zeros_like(lp), float),
                          np.asarray(variances if variances is not None else np.ones_like(lp), float),
                          np.asarray(matches if matches is not None else np.zeros(lp.size, bool), bool), text, ends_with_eos)


# ----------------------------------------------------------------------------------------------- token counts
@pytest.mark.parametrize("n, k, count", [
    (5, 0.4, 2),     # exact: 2.0
    (5, 0.3, 1),     # floor(1.5) = 1 (ceil would take 2)
    (7, 0.4, 2),     # floor(2.8) = 2 (ceil: 3)
    (2, 0.4, 1),     # floor(0.8) = 0 -> at least one token
    (1, 0.2, 1),
    (10, 0.3, 3),    # 3.0000000000000004 -> 3
    (100, 0.29, 28),  # the float product is 28.999999999999996: int() gives 28, as the reference's int(len * k)
    (4, 1.0, 4),
])
def test_min_k_count_is_max_1_floor(n, k, count) -> None:
    assert mia.min_k_count(n, k) == count


def test_min_k_count_rejects_k_out_of_range() -> None:
    for k in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            mia.min_k_count(5, k)


def test_loss_and_min_k_scores() -> None:
    log_probs = [-0.1, -2.0, -0.5, -4.0, -0.2]
    assert mia.loss_score(log_probs) == pytest.approx(-6.8 / 5)
    assert mia.min_k_score(log_probs, 0.2) == pytest.approx(-4.0)  # 1 token
    assert mia.min_k_score(log_probs, 0.4) == pytest.approx(-3.0)  # 2 tokens: (-4 - 2) / 2
    assert mia.min_k_score(log_probs, 0.3) == pytest.approx(-4.0)  # floor(1.5) = 1 token (the old ceil gave -3.0)
    assert mia.min_k_score(log_probs, 1.0) == pytest.approx(mia.loss_score(log_probs))
    assert mia.min_k_score([-1.5], 0.2) == pytest.approx(-1.5)
    assert mia.min_k_score([], 0.4) == 0.0  # the reference scores a row with no token 0
    with pytest.raises(ValueError):
        mia.loss_score([])


def test_eos_is_excluded_from_min_k_but_kept_in_loss_and_zlib() -> None:
    # Answer tokens -1.0, -0.5, then the EOS at -9.0 (the least likely: it would dominate Min-K%).
    stats = _stats([-1.0, -0.5, -9.0], text="ab")
    scores = mia.sequence_scores(stats, k=0.4)
    assert scores["min_k"] == pytest.approx(-1.0)  # body of 2 tokens, max(1, int(0.8)) = 1 -> the lowest of -1, -0.5
    assert scores["loss"] == pytest.approx(-10.5 / 3)  # LOSS keeps the EOS (the reference's evaluate_probability)
    assert scores["zlib"] == pytest.approx((-10.5 / 3) / len(zlib.compress(b"ab")))
    # A truncated answer (no EOS at its end) keeps every token.
    assert mia.sequence_scores(_stats([-1.0, -0.5, -9.0], ends_with_eos=False), 0.4)["min_k"] == pytest.approx(-9.0)
    assert _stats([-1.0, -0.5, -9.0]).body == slice(0, 2)
    assert _stats([], ends_with_eos=True).body == slice(0, 0)


def test_zlib_compresses_the_decoded_answer_text() -> None:
    # The text is whatever the answer tokens decode to (stats.text), not the raw dataset string.
    decoded, raw = " Paris is the capital of France.", "Paris is the capital of France."
    score = mia.sequence_scores(_stats([-0.5, -1.5], text=decoded, ends_with_eos=False))["zlib"]
    assert score == pytest.approx(-1.0 / len(zlib.compress(decoded.encode())))
    assert mia.zlib_score([-0.5, -1.5], raw) == pytest.approx(-1.0 / len(zlib.compress(raw.encode())))


def test_min_k_plus_plus_standardizes_each_token_with_a_1e_6_variance_floor() -> None:
    log_probs = np.array([-1.0, -3.0, -0.5])
    means = np.array([-2.0, -2.0, -0.5])
    variances = np.array([4.0, 1.0, 0.0])
    # z = [0.5, -1.0, 0 / 1e-3 = 0]; 1/3 of 3 -> 1 token: -1.0; 2/3 of 3 -> int(2.0) = 2: mean(-1, 0) = -0.5.
    assert mia.min_k_plus_plus_score(log_probs, means, variances, 1 / 3) == pytest.approx(-1.0)
    assert mia.min_k_plus_plus_score(log_probs, means, variances, 2 / 3) == pytest.approx(-0.5)
    # The clamp: variance 0 and 1e-8 both become 1e-6, sigma 1e-3: z = 0.001 / 0.001 = 1 (1e-12 would give 1000).
    assert mia.min_k_plus_plus_score([-1.0], [-1.001], [0.0], 1.0) == pytest.approx(1.0)
    assert mia.min_k_plus_plus_score([-1.0], [-1.001], [1e-8], 1.0) == pytest.approx(1.0)
    assert mia.min_k_plus_plus_score([-1.0], [-1.001], [4e-6], 1.0) == pytest.approx(0.5)  # above the floor: sigma 2e-3
    with pytest.raises(ValueError):
        mia.min_k_plus_plus_score(log_probs, means[:2], variances, 0.5)


def test_min_k_plus_plus_in_sequence_scores_drops_the_eos() -> None:
    stats = _stats([-1.0, -3.0, -20.0], means=[-2.0, -2.0, -1.0], variances=[4.0, 1.0, 1.0])
    # Body z = [0.5, -1.0]; k = 0.5 -> 1 token: -1.0 (with the EOS, z = -19 would win).
    assert mia.sequence_scores(stats, 0.5)["min_k_plus_plus"] == pytest.approx(-1.0)


# ----------------------------------------------------------------------------------------------- PrivLeak
def test_privleak_is_muse_percentage_on_one_minus_auc() -> None:
    # The reviewer's example: AUC 0.9 vs the retain model's 0.6 -> (0.1 - 0.4) / 0.4 * 100 = -75 %.
    assert mia.priv_leak(0.9, 0.6) == pytest.approx(-75.0)
    assert mia.priv_leak(0.6, 0.6) == 0.0
    assert mia.priv_leak(0.4, 0.6) == pytest.approx(50.0)  # over-unlearned: (0.6 - 0.4) / 0.4 * 100
    assert mia.priv_leak(1.0, 0.6) == pytest.approx(-100.0)  # every forget row outscores every held-out row
    assert mia.priv_leak(0.5, 0.5) == 0.0
    for bad in ((1.2, 0.5), (0.5, -0.1)):
        with pytest.raises(ValueError):
            mia.priv_leak(*bad)


# MUSE's published constants (swj0419/muse_bench constants.py AUC_RETRAIN, the retrained model's AUCs) and
# published PrivLeak of MUSE's target models (MUSE paper Table 3 / OpenUnlearning docs/repro.md, "Finetuned").
MUSE_RETRAIN_FORGET_HOLDOUT = {"news": 0.47719999999999996, "books": 0.5392999999999999}  # forget = non-member class
MUSE_RETRAIN_HOLDOUT_FORGET = {"news": 0.5227999999999999, "books": 0.4607}  # forget = member class (ours)
MUSE_TARGET_PRIVLEAK = {"news": -99.81, "books": -57.26}


@pytest.mark.parametrize("corpus", ["news", "books"])
def test_privleak_pinned_to_muse_published_values(corpus) -> None:
    # MUSE publishes both orientations of its Min-40% AUC: they sum to 1, so our AUC is 1 - MUSE's.
    ours_retain = MUSE_RETRAIN_HOLDOUT_FORGET[corpus]
    assert ours_retain + MUSE_RETRAIN_FORGET_HOLDOUT[corpus] == pytest.approx(1.0)
    # MUSE eval.py: (AUC - AUC_RETRAIN) / AUC_RETRAIN * 100 on its orientation; ours takes our orientation.
    muse_retain = MUSE_RETRAIN_FORGET_HOLDOUT[corpus]
    for muse_auc in (0.0, 0.1, muse_retain, 0.8):
        assert mia.priv_leak(1 - muse_auc, ours_retain) == pytest.approx((muse_auc - muse_retain) / muse_retain * 100, abs=1e-6)
    # The published target PrivLeak is negative: the target model (trained on the forget set) has our AUC
    # above the retrained model's, as a model that memorized its training data must.
    implied_auc = 1 - muse_retain * (1 + MUSE_TARGET_PRIVLEAK[corpus] / 100)
    assert implied_auc > ours_retain
    assert mia.priv_leak(implied_auc, ours_retain) == pytest.approx(MUSE_TARGET_PRIVLEAK[corpus])
    assert mia.priv_leak(ours_retain, ours_retain) == 0.0  # the published retrained row reads 0


def test_membership_auc() -> None:
    # Pairs member > non-member: 0.9 beats both, 0.8 beats both, 0.3 beats only 0.1 -> 5/6.
    assert mia.membership_auc([0.9, 0.8, 0.3], [0.5, 0.1]) == pytest.approx(5 / 6)
    assert mia.membership_auc([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5)
    assert mia.membership_auc([0.0], [1.0]) == 0.0
    # Swapping the classes gives 1 - AUC (MUSE's forget_holdout vs holdout_forget keys).
    assert mia.membership_auc([0.5, 0.1], [0.9, 0.8, 0.3]) == pytest.approx(1 / 6)
    with pytest.raises(ValueError):
        mia.membership_auc([], [0.1])


# ----------------------------------------------------------------------------------------------- other attacks
def test_reference_score_is_the_loss_difference() -> None:
    # Model mean log p -1.5, reference -2.0: the model finds the text likelier by 0.5 nats per token.
    assert mia.reference_score([-1.0, -2.0], [-3.0, -1.0]) == pytest.approx(0.5)
    assert mia.reference_score([-1.0, -2.0], [-1.0, -2.0]) == 0.0


def test_mean_parameter_grad_norm_is_the_mean_of_per_parameter_norms() -> None:
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0, 0.0])]
    assert mia.mean_parameter_grad_norm(grads, 2) == pytest.approx((5 + 1) / 2)  # not the global norm sqrt(26)
    assert mia.mean_parameter_grad_norm(grads, 1) == pytest.approx((7 + 1) / 2)
    assert mia.mean_parameter_grad_norm(grads, float("inf")) == pytest.approx((4 + 1) / 2)
    with pytest.raises(ValueError):
        mia.mean_parameter_grad_norm(grads, 3)


class _BigramLM(torch.nn.Module):
    """logits at position t = table[token_t]: the gradient of each position lands in its own row."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))
        self.unused = torch.nn.Parameter(torch.zeros(3))  # no gradient: not counted in the mean

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_gradnorm_excludes_the_eos_and_averages_per_parameter() -> None:
    vocab, eos = 8, 2
    model = _BigramLM(vocab)
    # prompt [1], answer [5, 6] + EOS: scored predictions 1 -> 5 and 5 -> 6; 6 -> EOS is left out.
    score = mia.sequence_gradnorm_scores(model, [([1, 5, 6, eos], [IGNORE_INDEX, 5, 6, eos])], eos, p=2)
    # Zero table: p uniform (1/V); d mean NLL / d logits = (p - onehot) / 2 on rows 1 and 5 only.
    row = np.full(vocab, 1 / vocab)
    row[0] -= 1  # any one-hot: the norm is the same
    expected = math.sqrt(2 * float(((row / 2) ** 2).sum()))  # one parameter with gradient: the table
    assert score.tolist() == pytest.approx([-expected])
    # Without the EOS rule (eos_id None) the 6 -> EOS prediction joins: 3 rows, each (p - onehot) / 3.
    with_eos = mia.sequence_gradnorm_scores(model, [([1, 5, 6, eos], [IGNORE_INDEX, 5, 6, eos])], None, p=2)
    assert with_eos.tolist() == pytest.approx([-math.sqrt(3 * float(((row / 3) ** 2).sum()))])
    assert all(p.grad is None for p in model.parameters())  # gradients cleared afterwards
    with pytest.raises(ValueError):
        mia.sequence_gradnorm_scores(model, [([1, eos], [IGNORE_INDEX, eos])], eos)


# ----------------------------------------------------------------------------------------------- memorization
@pytest.mark.parametrize("matches, em, es", [
    ([True, False, True, True], 0.75, 0.5),   # suffix all-true from k = 2: 1 - 2/4
    ([True, True, True], 1.0, 1.0),           # k = 0
    ([False, True, True, True, True], 0.8, 0.8),
    ([True, True, False], 2 / 3, 1 / 3),      # no suffix matches: the reference's loop ends at k = n - 1
    ([False], 0.0, 1.0),                      # ... so a single wrong token reads ES = 1 there (kept)
])
def test_exact_memorization_and_extraction_strength(matches, em, es) -> None:
    assert mia.exact_memorization(matches) == pytest.approx(em)
    assert mia.extraction_strength(matches) == pytest.approx(es)


def test_memorization_scores_drop_the_eos_and_handle_empty_answers() -> None:
    stats = [_stats([-1.0, -1.0, -1.0], matches=[True, True, False]),  # the EOS miss is not counted
             _stats([-1.0], matches=[True]),  # only an EOS: no EM (the reference marks None), ES 0
             _stats([-1.0, -1.0], matches=[False, True], ends_with_eos=False)]
    scores = mia.memorization_scores(stats)
    assert scores["exact_memorization"].tolist() == pytest.approx([1.0, 0.5])
    assert scores["extraction_strength"].tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert mia.extraction_strength([]) == 0.0
    with pytest.raises(ValueError):
        mia.exact_memorization([])


# ----------------------------------------------------------------------------------------------- token statistics
def test_token_log_prob_stats_matches_a_hand_softmax() -> None:
    # One sequence, 3 positions, vocab 2; position 0 predicts token 1 (label 1), position 1 predicts token 0.
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    log_probs, means, variances, matches, valid = mia.token_log_prob_stats(logits, labels)
    assert valid.tolist() == [[True, True]]
    assert matches.tolist() == [[True, True]]  # argmax 1 (p 0.75) and 0 (p 0.8)
    p0, p1 = np.array([0.25, 0.75]), np.array([0.8, 0.2])
    assert log_probs[0].tolist() == pytest.approx([math.log(0.75), math.log(0.8)], abs=1e-6)
    for row, p in ((0, p0), (1, p1)):
        mean = float((p * np.log(p)).sum())
        var = float((p * np.log(p) ** 2).sum() - mean**2)
        assert float(means[0, row]) == pytest.approx(mean, abs=1e-6)
        assert float(variances[0, row]) == pytest.approx(var, abs=1e-6)
    masked = mia.token_log_prob_stats(logits, torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0]]))
    assert masked[4].tolist() == [[False, True]] and float(masked[0][0, 0]) == 0.0
    assert mia.token_log_prob_stats(logits, torch.tensor([[IGNORE_INDEX, 0, 0]]))[3].tolist() == [[False, True]]


def test_one_hot_distribution_has_zero_variance_not_nan() -> None:
    logits = torch.tensor([[[0.0, -1e9, -1e9], [0.0, 0.0, 0.0]]])
    _, means, variances, _, _ = mia.token_log_prob_stats(logits, torch.tensor([[IGNORE_INDEX, 0]]))
    assert torch.isfinite(means).all() and torch.isfinite(variances).all()
    assert float(variances[0, 0]) == pytest.approx(0.0, abs=1e-6)


def test_stats_from_logits_rows_padding_eos_and_text() -> None:
    eos, vocab = 2, 5
    logits = torch.randn(2, 5, vocab, generator=torch.Generator().manual_seed(0))
    # Row 0: prompt [1], answer [3, 4] + EOS, one pad; row 1: prompt [1, 3], answer [4, 4] (truncated: no EOS).
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, eos, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 4, 4, IGNORE_INDEX]])
    decode = lambda ids: "".join("x" if i == 3 else "y" for i in ids if i != eos)  # noqa: E731 - skips the special EOS
    rows = mia.stats_from_logits(logits, labels, eos, decode)
    assert [r.log_probs.size for r in rows] == [3, 2]
    assert [r.ends_with_eos for r in rows] == [True, False]
    assert [r.text for r in rows] == ["xy", "yy"]
    log_p = torch.log_softmax(logits.double(), -1)
    assert rows[0].log_probs.tolist() == pytest.approx([float(log_p[0, 0, 3]), float(log_p[0, 1, 4]), float(log_p[0, 2, eos])], abs=1e-6)
    assert rows[1].argmax_match.tolist() == [int(log_p[1, 1].argmax()) == 4, int(log_p[1, 2].argmax()) == 4]


def test_attack_scores_stack_per_attack() -> None:
    stats = [_stats([-1.0, -2.0, -0.1], [-1.0, -1.0, 0.0], [1.0, 1.0, 1.0], text="ab"),
             _stats([-0.5, -0.3], [-1.0, 0.0], [0.25, 1.0], text="c")]
    scores = mia.attack_scores(stats, k=0.5)
    assert set(scores) == set(mia.TOKEN_ATTACKS)
    assert scores["loss"].tolist() == pytest.approx([-3.1 / 3, -0.4])
    assert scores["min_k"].tolist() == pytest.approx([-2.0, -0.5])  # bodies [-1, -2] and [-0.5]: 1 token each
    assert scores["min_k_plus_plus"].tolist() == pytest.approx([-1.0, 1.0])  # z: [0, -1] and [0.5 / 0.5]


def test_answer_token_stats_on_a_tiny_model(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnkit.data import encode_pair, format_answer, format_prompt
    from unlearnkit.evaluate.generate import score_answers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    questions, answers = ["What is the capital of France?", "How do I pick a lock?"], ["Paris.", "You insert a wrench."]
    stats = mia.answer_token_stats(model, tokenizer, questions, answers, "paper", batch_size=1)
    scores = score_answers(model, tokenizer, questions, answers, "paper")
    # Same tokens as answer scoring (EOS included): -mean log p == the mean NLL, per answer.
    for s, nll, question, answer in zip(stats, scores.mean_nll(), questions, answers):
        assert -s.log_probs.mean() == pytest.approx(nll, rel=1e-5)
        assert (s.var_log_probs >= 0).all() and s.log_probs.shape == s.mean_log_probs.shape == s.argmax_match.shape
        assert s.ends_with_eos
        prompt = format_prompt(tokenizer, question, "paper")
        answer_ids = encode_pair(tokenizer, prompt, format_answer(answer, "paper", prompt))[1]
        assert s.text == tokenizer.decode(answer_ids, skip_special_tokens=True)  # decoded tokens, EOS skipped
        assert tokenizer.eos_token not in s.text
    # GradNorm runs on the same sequences and leaves no gradient behind.
    grad = mia.gradnorm_scores(model, tokenizer, questions, answers, "paper")
    assert grad.shape == (2,) and (grad < 0).all()
    assert all(p.grad is None for p in model.parameters())
