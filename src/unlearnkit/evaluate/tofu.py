"""TOFU's metrics (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs").

Inputs are per-answer mean token NLLs (length-normalised: p_norm(a|q) = p(a|q)^(1/|a|) = exp(-mean NLL)):

    answer probability   forget / retain: mean_i p_norm(a_i | q_i)
                         real authors / world facts: mean_i p_norm(a_i) / (p_norm(a_i) + sum_j p_norm(a~_ij))
                         (the true answer's share among it and its perturbed (false) answers)
    truth ratio          R_i = gm_j p_norm(a~_ij | q_i) / p_norm(a^_i | q_i)
                         a^ = paraphrased answer (forget / retain) or the answer itself (real authors /
                         world facts), a~ = perturbed answers, gm = geometric mean
                         forget set:  mean_i min(R_i, 1 / R_i)   (a model that knows nothing has R ~ 1)
                         other sets:  mean_i max(0, 1 - R_i)     (higher = prefers the true answer)
    ROUGE-L recall       of the greedy answer against the true answer (rouge-score, stemmed)
    forget quality       p-value of the two-sample KS test between the R_i of the unlearned model and
                         of the retain model on the forget set (high = indistinguishable from never trained)
    model utility        harmonic mean of the 9 numbers {probability, truth ratio, ROUGE-L} x
                         {retain, real authors, world facts}

The functions here are pure (numpy in, float out); running models is ``unlearnkit.bench.tofu``'s job.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

UTILITY_SETS = ("retain", "real_authors", "world_facts")
UTILITY_METRICS = ("prob", "truth_ratio", "rouge_l")


def _nll_rows(mean_nll: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(mean_nll, dtype=np.float64)
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return array


def truth_ratios(paraphrased_nll: Sequence[float] | np.ndarray, perturbed_nll: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Per question R_i = gm_j p_norm(perturbed_ij) / p_norm(paraphrased_i) = exp(nll^_i - mean_j nll~_ij).

    Args:
        paraphrased_nll: [N] mean token NLL of each paraphrased (or true) answer.
        perturbed_nll: [N, P] mean token NLL of each of the P perturbed answers.
    Returns:
        [N] float64 truth ratios (< 1: the model prefers the paraphrased answer).
    """
    paraphrased = _nll_rows(paraphrased_nll, "paraphrased_nll")
    perturbed = _nll_rows(perturbed_nll, "perturbed_nll")
    if perturbed.ndim != 2 or perturbed.shape[0] != paraphrased.shape[0]:
        raise ValueError(f"perturbed_nll must be [N, P] with N = {paraphrased.shape[0]}, got shape {perturbed.shape}")
    # The geometric mean of normalised probabilities = exp(-mean of their NLLs).
    return np.exp(paraphrased - perturbed.mean(axis=1))


def truth_ratio_score(ratios: Sequence[float] | np.ndarray, forget: bool) -> float:
    """TOFU's reported truth ratio: mean min(R, 1/R) on the forget set, mean max(0, 1 - R) elsewhere."""
    r = _nll_rows(ratios, "ratios")
    return float(np.mean(np.minimum(r, 1 / r)) if forget else np.mean(np.maximum(0.0, 1 - r)))


def answer_probability(answer_nll: Sequence[float] | np.ndarray) -> float:
    """Mean length-normalised probability exp(-mean NLL) of the true answers (forget / retain sets)."""
    return float(np.mean(np.exp(-_nll_rows(answer_nll, "answer_nll"))))


def relative_answer_probability(answer_nll: Sequence[float] | np.ndarray, perturbed_nll: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Mean share p_norm(a) / (p_norm(a) + sum_j p_norm(a~_j)) of the true answer (real authors / world facts)."""
    true_p = np.exp(-_nll_rows(answer_nll, "answer_nll"))
    false_p = np.exp(-_nll_rows(perturbed_nll, "perturbed_nll"))
    if false_p.ndim != 2 or false_p.shape[0] != true_p.shape[0]:
        raise ValueError(f"perturbed_nll must be [N, P] with N = {true_p.shape[0]}, got shape {false_p.shape}")
    return float(np.mean(true_p / (true_p + false_p.sum(axis=1))))


def rouge_l_recall(hypothesis: str, reference: str) -> float:
    """ROUGE-L recall LCS / |reference tokens| (rouge-score, Porter-stemmed, as TOFU reports it)."""
    from unlearnkit.evaluate.metrics import _rouge_l_scorer

    return float(_rouge_l_scorer().score(reference, hypothesis)["rougeL"].recall)


def mean_rouge_l_recall(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"need equally many (>0) hypotheses and references, got {len(hypotheses)} and {len(references)}")
    return float(np.mean([rouge_l_recall(h, r) for h, r in zip(hypotheses, references)]))


def forget_quality(unlearned_ratios: Sequence[float] | np.ndarray, retain_ratios: Sequence[float] | np.ndarray) -> float:
    """KS-test p-value between the forget-set truth ratios of the unlearned and the retain model.

    scipy.stats.ks_2samp (two-sided, exact for small samples). Invariant to any monotone transform
    applied to both samples, so R and 1/R give the same value.
    """
    from scipy.stats import ks_2samp

    a, b = _nll_rows(unlearned_ratios, "unlearned_ratios"), _nll_rows(retain_ratios, "retain_ratios")
    return float(ks_2samp(a, b).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean n / sum(1/x); 0 when any value is 0 (that metric has collapsed). Values must be >= 0."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or np.any(array < 0) or not np.all(np.isfinite(array)):
        raise ValueError(f"harmonic mean needs finite values >= 0, got {list(values)}")
    if np.any(array == 0):
        return 0.0
    return float(array.size / np.sum(1 / array))


def model_utility(metrics: dict[str, float]) -> float:
    """Harmonic mean of ``metrics[f"{set}_{metric}"]`` over UTILITY_SETS x UTILITY_METRICS (9 numbers)."""
    keys = [f"{s}_{m}" for s in UTILITY_SETS for m in UTILITY_METRICS]
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise KeyError(f"model utility needs {', '.join(missing)}")
    return harmonic_mean([metrics[k] for k in keys])
