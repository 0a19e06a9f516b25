"""Membership-inference metrics: does a model still treat the forget set like its training data?

A membership-inference attack scores each sequence; a higher score means "looks like training data".
The attacks here need only the model's per-token log-probabilities of the answer tokens (and, for
Min-K%++, the mean and variance of log p under the model's next-token distribution at each position):

    LOSS      mean_t log p(x_t | x_<t)                                (Yeom et al. 2018)
    ZLib      -(mean_t -log p(x_t | x_<t)) / zlib_bytes(text)         (Carlini et al. 2021)
    Min-K%    mean of the lowest k% of log p(x_t | x_<t)              (Shi et al. 2024)
    Min-K%++  mean of the lowest k% of (log p(x_t) - mu_t) / sigma_t,  (Zhang et al. 2024)
              mu_t = E_{z~p(.|x_<t)} log p(z),  sigma_t^2 = Var_{z~p(.|x_<t)} log p(z)

AUC (forget set = positive class vs a held-out set the model never saw) near 0.5 means the attack
cannot tell the forget set from unseen data, as for a model never trained on it. MUSE's PrivLeak
(Shi et al. 2024) compares with the retain model (trained without the forget set):

    PrivLeak = (AUC_unlearned - AUC_retain) / AUC_retain

0 is ideal; positive = the forget set still leaks (under-unlearning), negative = it now looks LESS
like training data than unseen text does (over-unlearning, itself a membership signal).

Score functions are pure (numpy in, float out); ``token_log_prob_stats`` is a pure tensor function;
``answer_token_stats`` runs a model.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from unlearnkit.losses import IGNORE_INDEX

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")


@dataclass(frozen=True)
class TokenStats:
    """One sequence's scored tokens: log p of each token, and mean / variance of log p under the
    model's next-token distribution at that position (all [n_tokens] float64)."""

    log_probs: np.ndarray
    mean_log_probs: np.ndarray
    var_log_probs: np.ndarray


# ----------------------------------------------------------------------------------------------- scores
def _as_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError("a membership score needs at least one scored token")
    return array


def loss_score(log_probs: Sequence[float] | np.ndarray) -> float:
    """LOSS attack: mean token log-probability (= minus the mean NLL); higher = more member-like."""
    return float(_as_array(log_probs).mean())


def zlib_score(log_probs: Sequence[float] | np.ndarray, text: str) -> float:
    """ZLib attack: -(mean token NLL) / (zlib-compressed size of ``text`` in bytes).

    Dividing by the zlib size calibrates for how predictable the text is to a generic compressor, so
    repetitive text does not look like training data merely because it is easy. Higher = member.
    """
    compressed = len(zlib.compress(text.encode("utf-8")))
    return float(_as_array(log_probs).mean() / compressed)  # mean log p = -(mean NLL)


def _lowest_fraction_mean(values: np.ndarray, k: float) -> float:
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    count = max(1, math.ceil(k * values.size))  # at least one token, so short answers still score
    return float(np.sort(values)[:count].mean())


def min_k_score(log_probs: Sequence[float] | np.ndarray, k: float = 0.2) -> float:
    """Min-K% attack: mean of the ceil(k * n) lowest token log-probabilities; higher = member.

    Unseen text tends to hold a few very unlikely tokens; memorized text has none.
    """
    return _lowest_fraction_mean(_as_array(log_probs), k)


def min_k_plus_plus_score(
    log_probs: Sequence[float] | np.ndarray,
    mean_log_probs: Sequence[float] | np.ndarray,
    var_log_probs: Sequence[float] | np.ndarray,
    k: float = 0.2,
) -> float:
    """Min-K%++ attack: mean of the ceil(k * n) lowest standardized token log-probabilities.

    z_t = (log p(x_t) - mu_t) / sigma_t with mu_t, sigma_t^2 the mean and variance of log p(z) for z
    drawn from the model's own next-token distribution: a training token sits at a local maximum of
    the likelihood, i.e. well above what the model expects at that position. A position where the
    distribution is one-hot (sigma_t = 0) is standardized with a tiny sigma, not divided by zero.
    """
    lp, mu, var = _as_array(log_probs), _as_array(mean_log_probs), _as_array(var_log_probs)
    if not lp.shape == mu.shape == var.shape:
        raise ValueError(f"log_probs, mean_log_probs and var_log_probs differ in length: {lp.size}, {mu.size}, {var.size}")
    z = (lp - mu) / np.sqrt(np.maximum(var, 1e-12))
    return _lowest_fraction_mean(z, k)


def sequence_scores(stats: TokenStats, text: str, k: float = 0.2) -> dict[str, float]:
    """Every attack's score of one sequence (keys: ATTACKS)."""
    return {
        "loss": loss_score(stats.log_probs),
        "zlib": zlib_score(stats.log_probs, text),
        "min_k": min_k_score(stats.log_probs, k),
        "min_k_plus_plus": min_k_plus_plus_score(stats.log_probs, stats.mean_log_probs, stats.var_log_probs, k),
    }


def attack_scores(stats: Sequence[TokenStats], texts: Sequence[str], k: float = 0.2) -> dict[str, np.ndarray]:
    """Per attack, the [n] scores of the sequences (``texts[i]`` is the scored text of ``stats[i]``)."""
    if len(stats) != len(texts):
        raise ValueError(f"{len(stats)} token stats but {len(texts)} texts")
    rows = [sequence_scores(s, t, k) for s, t in zip(stats, texts)]
    return {attack: np.array([row[attack] for row in rows]) for attack in ATTACKS}


# ----------------------------------------------------------------------------------------------- AUC / PrivLeak
def membership_auc(member_scores: Sequence[float] | np.ndarray, nonmember_scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of telling members (e.g. the forget set; positive class) from non-members by score.

    0.5 = chance; 1 = every member scores above every non-member. Via scikit-learn's roc_auc_score
    (ties count half).
    """
    from sklearn.metrics import roc_auc_score

    members, nonmembers = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("membership AUC needs at least one member and one non-member score")
    labels = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    return float(roc_auc_score(labels, np.concatenate([members, nonmembers])))


def priv_leak(auc_unlearned: float, auc_retain: float) -> float:
    """MUSE PrivLeak: (AUC_unlearned - AUC_retain) / AUC_retain; 0 is ideal (see module docstring)."""
    if auc_retain <= 0:
        raise ValueError(f"PrivLeak needs a retain-model AUC > 0, got {auc_retain}")
    return float((auc_unlearned - auc_retain) / auc_retain)


# ----------------------------------------------------------------------------------------------- token statistics
def token_log_prob_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per next-token position: log p(label), and mean / variance of log p under p itself.

    Args:
        logits: [B, T, V] (position t predicts token t+1); log-softmax runs in float32.
        labels: [B, T] unshifted token ids, IGNORE_INDEX where a token is not scored.
    Returns:
        log_probs, mean_log_probs, var_log_probs: [B, T-1] float32 (0 where not valid); valid: [B, T-1] bool.
        mean = sum_v p_v log p_v; var = sum_v p_v (log p_v)^2 - mean^2.
    """
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    # Only the scored positions: the vocabulary-wide terms cost [n_valid, V], not [B, T, V].
    log_p = torch.log_softmax(logits[:, :-1, :][valid].float(), dim=-1)
    picked = log_p.gather(-1, targets[valid].unsqueeze(-1)).squeeze(-1)
    p = log_p.exp()
    # p * log p is 0 where p underflows to 0 (log p = -inf would give NaN): mask those terms.
    finite_log_p = torch.where(p > 0, log_p, torch.zeros_like(log_p))
    mean = (p * finite_log_p).sum(-1)
    var = ((p * finite_log_p.square()).sum(-1) - mean.square()).clamp(min=0)
    outputs = []
    for values in (picked, mean, var):
        full = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
        full[valid] = values
        outputs.append(full)
    return outputs[0], outputs[1], outputs[2], valid


@torch.no_grad()
def answer_token_stats(
    model: Any, tokenizer: Any, questions: Sequence[str], answers: Sequence[str], template: str,
    max_length: int = 256, batch_size: int = 16,
) -> list[TokenStats]:
    """TokenStats of each answer given its question (answer tokens + EOS, tokenized exactly as in training)."""
    from unlearnkit.data import collate, encode_pair, format_answer, format_prompt, join_prompt_answer, pad_id_of
    from unlearnkit.evaluate.generate import model_device

    sequences = []
    for question, answer in zip(questions, answers):
        prompt = format_prompt(tokenizer, question, template)
        prompt_ids, answer_ids = encode_pair(tokenizer, prompt, format_answer(answer, template, prompt))
        sequences.append(join_prompt_answer(prompt_ids, answer_ids, max_length, tokenizer.bos_token_id))
    device = model_device(model)
    was_training = model.training
    model.eval()
    out: list[TokenStats] = []
    for start in range(0, len(sequences), batch_size):
        batch = {k: v.to(device) for k, v in collate(sequences[start:start + batch_size], pad_id_of(tokenizer)).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        log_probs, means, variances, valid = (x.cpu() for x in token_log_prob_stats(logits, batch["labels"]))
        for row in range(valid.shape[0]):
            keep = valid[row]
            out.append(TokenStats(log_probs[row][keep].double().numpy(), means[row][keep].double().numpy(),
                                  variances[row][keep].double().numpy()))
    model.train(was_training)
    return out
