"""Membership inference and memorization, as OpenUnlearning and MUSE define them.

Users compare these numbers with published tables (MUSE, OpenUnlearning), so every definition here
follows the reference code line for line (checked on identical inputs: docs/tofu_mia.md). A sequence
is a prompt + answer; "answer tokens" are the labelled tokens (the answer and its end token, EOS).

Membership scores (higher = "looks like training data"; OpenUnlearning's scores are these negated,
with the member class labelled 0, so the AUCs are the same numbers):

    LOSS       mean_t log p(x_t | x_<t)                      all answer tokens, EOS included
    ZLib       LOSS / zlib_bytes(decode(answer tokens))      EOS included; the text is the decoded
                                                             answer tokens, special tokens skipped
    Reference  LOSS(model) - LOSS(reference model)           EOS included; the reference is the retain
                                                             model (OpenUnlearning's TOFU/MUSE configs)
    Min-K%     mean of the m lowest log p(x_t | x_<t)        EOS excluded; m = max(1, int(k * n))
    Min-K%++   mean of the m lowest (log p(x_t) - mu_t) / sqrt(max(s2_t, 1e-6)),   EOS excluded
               mu_t = E_{z~p(.|x_<t)} log p(z), s2_t = Var_{z~p(.|x_<t)} log p(z)
    GradNorm   -(1/P) sum_params ||d NLL / d theta||_p,       EOS excluded; NLL = mean over tokens;
                                                             the mean of per-parameter norms (p = 2)

("EOS excluded": OpenUnlearning's ``tokenwise_logprobs`` drops the last labelled position, which its
data pipeline always makes the EOS; here the last answer token is dropped when it is the EOS.)

AUC: forget set (members) vs a held-out set no model trained on, ties count half. PrivLeak (MUSE,
arXiv 2407.06460; OpenUnlearning's ``privleak``) reads AUCs the other way round (MUSE labels the
forget set as the non-member class), i.e. on 1 - AUC, and is a percentage:

    PrivLeak = ((1 - AUC_model) - (1 - AUC_retain)) / ((1 - AUC_retain) + 1e-10) * 100

0 is ideal; negative = the forget set still looks like training data (under-unlearning; a model
that fully memorized it reads -100); positive = it looks LESS like training data than for the retain
model (over-unlearning, itself a membership signal). The headline is Min-K% with k = 0.4.

Memorization (OpenUnlearning's ``exact_memorization`` / ``extraction_strength``, teacher-forced, EOS
excluded; match_t = [argmax_v p(v | x_<t) == x_t]):

    EM = mean_t match_t
    ES = 1 - k*/n,  k* = the smallest k in [0, n-1] whose suffix match_k..match_{n-1} is all true,
                    and n - 1 when none is (the reference loop's last index: ES is then 1/n, not 0)

Score functions are pure (numpy in, float out); ``token_log_prob_stats`` and ``stats_from_logits``
are pure tensor functions; ``answer_token_stats`` and ``gradnorm_scores`` run a model.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from unlearnkit.losses import IGNORE_INDEX

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm", "reference")
TOKEN_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")  # from one forward pass of the model alone
HEADLINE_ATTACK = "min_k"  # MUSE's and OpenUnlearning's PrivLeak: Min-K% with k = 0.4
MIN_K_PLUS_PLUS_VAR_FLOOR = 1e-6  # OpenUnlearning clamps the variance here (numerical stability)
PRIVLEAK_EPS = 1e-10  # OpenUnlearning's guard in the PrivLeak denominator
GRADNORM_P = (1, 2, float("inf"))


@dataclass(frozen=True)
class TokenStats:
    """One sequence's answer tokens (EOS included when present; all arrays [n_tokens]).

    log_probs: log p of each token; mean_log_probs / var_log_probs: mean and variance of log p under
    the model's next-token distribution at that position; argmax_match: the greedy (argmax) next token
    equals the token; text: the answer tokens decoded, special tokens skipped; ends_with_eos: the last
    token is the EOS (Min-K%, Min-K%++, GradNorm, EM and ES leave it out).
    """

    log_probs: np.ndarray
    mean_log_probs: np.ndarray
    var_log_probs: np.ndarray
    argmax_match: np.ndarray
    text: str = ""
    ends_with_eos: bool = True

    @property
    def body(self) -> slice:
        """The tokens the EOS-excluding scores read: every answer token but a final EOS."""
        return slice(0, self.log_probs.size - int(self.ends_with_eos and self.log_probs.size > 0))


# ----------------------------------------------------------------------------------------------- scores
def _as_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _nonempty(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = _as_array(values)
    if array.size == 0:
        raise ValueError("a membership score needs at least one scored token")
    return array


def loss_score(log_probs: Sequence[float] | np.ndarray) -> float:
    """LOSS attack: mean token log-probability (= minus the mean NLL, EOS included); higher = member."""
    return float(_nonempty(log_probs).mean())


def zlib_score(log_probs: Sequence[float] | np.ndarray, text: str) -> float:
    """ZLib attack: (mean token log p) / (zlib-compressed size of ``text`` in bytes); higher = member.

    ``text`` is the decoded answer tokens (as the reference decodes its labels, special tokens skipped).
    Dividing by the zlib size calibrates for how predictable the text is to a generic compressor.
    """
    compressed = len(zlib.compress(text.encode("utf-8")))
    return float(_nonempty(log_probs).mean() / compressed)


def min_k_count(n_tokens: int, k: float) -> int:
    """Tokens Min-K% / Min-K%++ average: max(1, int(k * n)), floor as the reference writes it (the
    float product, so e.g. int(0.29 * 100) = 28 there and here)."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    return max(1, int(n_tokens * k))


def _lowest_mean(values: np.ndarray, k: float) -> float:
    if values.size == 0:
        return 0.0  # the reference scores a sequence with no token 0 (it keeps the row)
    return float(np.sort(values)[: min_k_count(values.size, k)].mean())


def min_k_score(log_probs: Sequence[float] | np.ndarray, k: float = 0.4) -> float:
    """Min-K% attack: mean of the max(1, int(k * n)) lowest token log-probabilities (EOS excluded by
    the caller); higher = member. Unseen text tends to hold a few very unlikely tokens."""
    return _lowest_mean(_as_array(log_probs), k)


def min_k_plus_plus_score(
    log_probs: Sequence[float] | np.ndarray,
    mean_log_probs: Sequence[float] | np.ndarray,
    var_log_probs: Sequence[float] | np.ndarray,
    k: float = 0.4,
) -> float:
    """Min-K%++ attack: mean of the max(1, int(k * n)) lowest z_t = (log p(x_t) - mu_t) / sigma_t.

    mu_t, sigma_t^2: mean and variance of log p(z) for z drawn from the model's own next-token
    distribution (a training token sits well above what the model expects at its position). The
    variance is clamped at 1e-6 as in the reference, so a one-hot position does not divide by zero.
    """
    lp, mu, var = _as_array(log_probs), _as_array(mean_log_probs), _as_array(var_log_probs)
    if not lp.shape == mu.shape == var.shape:
        raise ValueError(f"log_probs, mean_log_probs and var_log_probs differ in length: {lp.size}, {mu.size}, {var.size}")
    z = (lp - mu) / np.sqrt(np.maximum(var, MIN_K_PLUS_PLUS_VAR_FLOOR))
    return _lowest_mean(z, k)


def reference_score(log_probs: Sequence[float] | np.ndarray, reference_log_probs: Sequence[float] | np.ndarray) -> float:
    """Reference attack: LOSS(model) - LOSS(reference) = NLL_ref - NLL_model (EOS included); higher =
    member (the model finds the text likelier than a model that never trained on it does)."""
    return loss_score(log_probs) - loss_score(reference_log_probs)


def exact_memorization(argmax_match: Sequence[bool] | np.ndarray) -> float:
    """EM: share of answer tokens (EOS excluded by the caller) the model's greedy next token gets right."""
    matches = np.asarray(argmax_match, dtype=bool).reshape(-1)
    if matches.size == 0:
        raise ValueError("exact memorization needs at least one answer token")
    return float(matches.mean())


def extraction_strength(argmax_match: Sequence[bool] | np.ndarray) -> float:
    """ES = 1 - k*/n: the longest suffix the model completes teacher-forced, as a share of the answer.

    k* is the smallest k whose matches k..n-1 are all true; when none is, the reference's loop ends on
    its last index k = n - 1, so ES = 1/n (kept: numbers must compare). No token: 0, as the reference.
    """
    matches = np.asarray(argmax_match, dtype=bool).reshape(-1)
    n = matches.size
    if n == 0:
        return 0.0
    suffix_all = np.logical_and.accumulate(matches[::-1])[::-1]  # suffix_all[k] = all(matches[k:])
    hits = np.flatnonzero(suffix_all)
    k = int(hits[0]) if hits.size else n - 1
    return float(1 - k / n)


def sequence_scores(stats: TokenStats, k: float = 0.4) -> dict[str, float]:
    """The single-model attacks' scores of one sequence (keys: TOKEN_ATTACKS)."""
    body = stats.body
    return {
        "loss": loss_score(stats.log_probs),
        "zlib": zlib_score(stats.log_probs, stats.text),
        "min_k": min_k_score(stats.log_probs[body], k),
        "min_k_plus_plus": min_k_plus_plus_score(stats.log_probs[body], stats.mean_log_probs[body], stats.var_log_probs[body], k),
    }


def attack_scores(stats: Sequence[TokenStats], k: float = 0.4) -> dict[str, np.ndarray]:
    """Per single-model attack (TOKEN_ATTACKS), the [n] scores of the sequences."""
    rows = [sequence_scores(s, k) for s in stats]
    return {attack: np.array([row[attack] for row in rows], dtype=np.float64) for attack in TOKEN_ATTACKS}


def memorization_scores(stats: Sequence[TokenStats]) -> dict[str, np.ndarray]:
    """Per sequence, exact memorization and extraction strength ([n] each, EOS excluded).

    A sequence with no token is left out of EM (the reference marks it None) and scores 0 in ES."""
    em = [exact_memorization(s.argmax_match[s.body]) for s in stats if s.argmax_match[s.body].size]
    return {"exact_memorization": np.array(em, dtype=np.float64),
            "extraction_strength": np.array([extraction_strength(s.argmax_match[s.body]) for s in stats], dtype=np.float64)}


# ----------------------------------------------------------------------------------------------- AUC / PrivLeak
def membership_auc(member_scores: Sequence[float] | np.ndarray, nonmember_scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of telling members (e.g. the forget set; positive class) from non-members by score.

    0.5 = chance; 1 = every member scores above every non-member. Via scikit-learn's roc_auc_score
    (ties count half), as the reference.
    """
    from sklearn.metrics import roc_auc_score

    members, nonmembers = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("membership AUC needs at least one member and one non-member score")
    labels = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    return float(roc_auc_score(labels, np.concatenate([members, nonmembers])))


def priv_leak(auc_model: float, auc_retain: float) -> float:
    """MUSE PrivLeak in percent: ((1 - AUC_model) - (1 - AUC_retain)) / ((1 - AUC_retain) + 1e-10) * 100.

    AUCs in this module's convention (forget set = positive class); MUSE's AUC is 1 - ours. E.g. AUC
    0.9 against a retain model's 0.6: (0.1 - 0.4) / 0.4 * 100 = -75 (the forget set still leaks).
    """
    for name, value in (("AUC_model", auc_model), ("AUC_retain", auc_retain)):
        if not 0 <= value <= 1:
            raise ValueError(f"PrivLeak needs AUCs in [0, 1], got {name} = {value}")
    muse_model, muse_retain = 1 - auc_model, 1 - auc_retain
    return float((muse_model - muse_retain) / (muse_retain + PRIVLEAK_EPS) * 100)


# ----------------------------------------------------------------------------------------------- token statistics
def token_log_prob_stats(
    logits: torch.Tensor, labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per next-token position: log p(label), mean / variance of log p under p itself, argmax == label.

    Args:
        logits: [B, T, V] (position t predicts token t+1); log-softmax runs in float32.
        labels: [B, T] unshifted token ids, IGNORE_INDEX where a token is not scored.
    Returns:
        log_probs, mean_log_probs, var_log_probs: [B, T-1] float32 (0 where not valid);
        argmax_match: [B, T-1] bool; valid: [B, T-1] bool.
        mean = sum_v p_v log p_v; var = sum_v p_v (log p_v)^2 - mean^2 (clamped at 0: rounding).
    """
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    # Only the scored positions: the vocabulary-wide terms cost [n_valid, V], not [B, T, V].
    log_p = torch.log_softmax(logits[:, :-1, :][valid].float(), dim=-1)
    picked_targets = targets[valid]
    picked = log_p.gather(-1, picked_targets.unsqueeze(-1)).squeeze(-1)
    match = log_p.argmax(-1) == picked_targets  # argmax of the log-softmax, as the reference
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
    full_match = torch.zeros(targets.shape, dtype=torch.bool, device=logits.device)
    full_match[valid] = match
    return outputs[0], outputs[1], outputs[2], full_match, valid


def stats_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, eos_id: int | None, decode: Callable[[list[int]], str] | None = None,
) -> list[TokenStats]:
    """One TokenStats per row of a batch (logits [B, T, V], labels [B, T] as token_log_prob_stats).

    ``eos_id``: a row whose last scored label is this id ends with EOS; ``decode``: token ids -> text
    for ZLib (the tokenizer's decode with special tokens skipped); None leaves the text empty.
    """
    log_probs, means, variances, matches, valid = (x.cpu() for x in token_log_prob_stats(logits, labels))
    targets = labels[:, 1:].cpu()
    out = []
    for row in range(valid.shape[0]):
        keep = valid[row]
        ids = targets[row][keep].tolist()
        out.append(TokenStats(log_probs[row][keep].double().numpy(), means[row][keep].double().numpy(),
                              variances[row][keep].double().numpy(), matches[row][keep].numpy(),
                              decode(ids) if decode is not None else "",
                              ends_with_eos=bool(ids) and eos_id is not None and ids[-1] == eos_id))
    return out


def _answer_sequences(tokenizer: Any, questions: Sequence[str], answers: Sequence[str], template: str,
                      max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of each question + answer + EOS, tokenized and truncated exactly as in training."""
    from unlearnkit.data import encode_pair, format_answer, format_prompt, join_prompt_answer

    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    sequences = []
    for question, answer in zip(questions, answers):
        prompt = format_prompt(tokenizer, question, template)
        prompt_ids, answer_ids = encode_pair(tokenizer, prompt, format_answer(answer, template, prompt))
        sequences.append(join_prompt_answer(prompt_ids, answer_ids, max_length, tokenizer.bos_token_id))
    return sequences


@torch.no_grad()
def answer_token_stats(
    model: Any, tokenizer: Any, questions: Sequence[str], answers: Sequence[str], template: str,
    max_length: int = 256, batch_size: int = 16,
) -> list[TokenStats]:
    """TokenStats of each answer given its question (answer tokens + EOS, tokenized exactly as in training)."""
    from unlearnkit.data import collate, pad_id_of
    from unlearnkit.evaluate.generate import model_device

    sequences = _answer_sequences(tokenizer, questions, answers, template, max_length)
    device = model_device(model)
    was_training = model.training
    model.eval()
    out: list[TokenStats] = []
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731 - as the reference decodes its labels
    for start in range(0, len(sequences), batch_size):
        batch = {k: v.to(device) for k, v in collate(sequences[start:start + batch_size], pad_id_of(tokenizer)).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out += stats_from_logits(logits, batch["labels"], tokenizer.eos_token_id, decode)
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------------- GradNorm
def mean_parameter_grad_norm(grads: Sequence[torch.Tensor], p: float = 2) -> float:
    """(1/P) sum_i ||g_i||_p over the P parameter gradients: the mean of per-parameter norms, not one
    global norm (as the reference)."""
    if p not in GRADNORM_P:
        raise ValueError(f"GradNorm p must be one of 1, 2, inf; got {p}")
    if not grads:
        raise ValueError("GradNorm needs at least one parameter gradient")
    return float(torch.stack([g.detach().float().norm(p=p) for g in grads]).mean())


def gradnorm_scores(
    model: Any, tokenizer: Any, questions: Sequence[str], answers: Sequence[str], template: str,
    max_length: int = 256, p: float = 2,
) -> np.ndarray:
    """GradNorm attack of each answer given its question (tokenized as in training): sequence_gradnorm_scores."""
    return sequence_gradnorm_scores(model, _answer_sequences(tokenizer, questions, answers, template, max_length),
                                    tokenizer.eos_token_id, p)


def sequence_gradnorm_scores(
    model: Any, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], eos_id: int | None, p: float = 2,
) -> np.ndarray:
    """GradNorm attack: per sequence, -(mean over parameters of ||d NLL / d theta||_p); higher = member.

    ``sequences``: (input ids, labels) pairs, labels IGNORE_INDEX outside the answer, the answer last.
    NLL = mean over the answer tokens, a final EOS excluded (as the reference's tokenwise_logprobs). One
    sequence per backward pass (the reference runs batch 1). The model stays in eval mode (no dropout;
    the reference switches to train mode, which is the same for models without dropout such as Llama
    or SmolLM2); its .grad fields are cleared before and after, so never call this mid-training step.
    """
    if p not in GRADNORM_P:
        raise ValueError(f"GradNorm p must be one of 1, 2, inf; got {p}")
    from unlearnkit.evaluate.generate import model_device

    device = model_device(model)
    was_training = model.training
    model.eval()
    scores = []
    for input_ids, labels in sequences:
        ids = torch.tensor([list(input_ids)], device=device)
        targets = torch.tensor([list(labels)], device=device)[:, 1:]
        if eos_id is not None and labels[-1] == eos_id:
            targets[0, -1] = IGNORE_INDEX  # the answer ends the sequence (batch 1, no padding): its last label is the EOS
        valid = targets != IGNORE_INDEX
        if not valid.any():
            raise ValueError("GradNorm needs an answer token besides the EOS")
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            log_p = torch.log_softmax(model(input_ids=ids).logits[:, :-1, :].float(), dim=-1)
            picked = log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[valid]
            (-picked.mean()).backward()
        grads = [param.grad for param in model.parameters() if param.grad is not None]
        scores.append(-mean_parameter_grad_norm(grads, p))
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return np.array(scores, dtype=np.float64)
