"""Pure, masked loss functions on tensors (no model calls).

Conventions: ``logits`` are [B, T, V] where position t predicts token t+1; ``labels`` are [B, T],
unshifted, with -100 on every token that must not count (prompt, padding). Log-softmax runs in
float32 whatever the input dtype, and a sequence (or batch) with no valid token contributes 0, not NaN.

Paper (Yao, Xu, Liu 2023, eq. 2-5), one step minimises
    L = w_fgt * L_fgt + w_rdn * L_rdn + w_nor * L_nor
    L_fgt = -mean_i NLL(y_i | x_i)                   (gradient ascent on forget answers)
    L_rdn =  mean_i mean_k NLL(y_rdn_k | x_i)       (random normal answers to forget prompts)
    L_nor =  mean_t KL(p_orig(. | z_<t) || p_cur(. | z_<t))   (normal data, per valid token)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of the next token and its validity mask.

    Args:
        logits: [B, T, V], any float dtype.
        labels: [B, T] token ids, IGNORE_INDEX where a token must not count.
    Returns:
        nll: [B, T-1] float32, 0 at ignored positions; valid: [B, T-1] bool.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    valid = shifted_labels != IGNORE_INDEX
    nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shifted_labels.shape)
    return nll * valid, valid


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL per sequence over its answer tokens (labels != -100).

    NLL_i = sum_t [label_{i,t} valid] * -log p(label_{i,t} | tokens_<t) / max(1, #valid_i)

    Args:
        logits: [B, T, V] (position t predicts token t+1).
        labels: [B, T] unshifted, -100 outside the answer.
    Returns:
        [B] float32; 0 for a sequence with no valid token.
    """
    nll, valid = token_nll(logits, labels)
    return nll.sum(dim=1) / valid.sum(dim=1).clamp(min=1)


def answer_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL and number of valid tokens per sequence ([B], [B]); for corpus perplexity."""
    nll, valid = token_nll(logits, labels)
    return nll.sum(dim=1), valid.sum(dim=1)


def gradient_ascent_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_fgt = -mean_i answer_nll_i: minimising it raises the NLL of the forget answers. Scalar."""
    return -answer_nll(logits, labels).mean()


def next_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: logit position t counts when tokens t and t+1 are both real (not padding).

    The last position predicts past the sequence and never counts.
    """
    real = attention_mask.bool()
    mask = torch.zeros_like(real)
    mask[:, :-1] = real[:, :-1] & real[:, 1:]
    return mask


def forward_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid positions of KL(reference || policy) between next-token distributions.

    KL_t = sum_v p_ref(v) * (log p_ref(v) - log p_pol(v)),   result = sum_t mask_t KL_t / max(1, sum_t mask_t)

    Args:
        policy_logits: [B, T, V] of the model being unlearned (gradients flow).
        reference_logits: [B, T, V] of the original model (treated as a constant).
        mask: [B, T] bool, positions that count (e.g. ``next_token_mask(attention_mask)``).
    Returns:
        scalar float32 >= 0; 0 when no position is valid.
    """
    policy_logp = policy_logits.float().log_softmax(dim=-1)
    reference_logp = reference_logits.detach().float().log_softmax(dim=-1)
    per_token = F.kl_div(policy_logp, reference_logp, log_target=True, reduction="none").sum(dim=-1)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


# ----------------------------------------------------------------------------- on gathered positions
# The training step applies the LM head only at the positions a loss reads (unlearnkit.step); these
# take those logits as [n, V] rows, one row per read position, in any float dtype.


def read_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target_i | position_i) per read position.

    Args:
        logits: [n, V]; targets: [n] token ids.
    Returns:
        [n] float32.
    """
    return F.cross_entropy(logits.float(), targets, reduction="none")


def read_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || policy) of the next-token distribution per read position.

    KL_i = sum_v p_ref(v | i) * (log p_ref(v | i) - log p_pol(v | i))

    Args:
        policy_logits: [n, V] (gradients flow); reference_logits: [n, V] (a constant).
    Returns:
        [n] float32 >= 0.
    """
    policy_logp = policy_logits.float().log_softmax(dim=-1)
    reference_logp = reference_logits.detach().float().log_softmax(dim=-1)
    return F.kl_div(policy_logp, reference_logp, log_target=True, reduction="none").sum(dim=-1)


def per_sequence_sum(values: torch.Tensor, sequence: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of per-read values and number of reads for each of ``count`` sequences.

    Args:
        values: [n] float; sequence: [n] long in [0, count).
    Returns:
        (sums [count] float32, reads [count] float32); 0 for a sequence without reads.
    """
    sums = torch.zeros(count, dtype=torch.float32, device=values.device).index_add(0, sequence, values.float())
    reads = torch.zeros(count, dtype=torch.float32, device=values.device).index_add(
        0, sequence, torch.ones_like(values, dtype=torch.float32))
    return sums, reads


def masked_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of [n] values; 0 (not NaN) when n == 0. For the KL: the mean over every read token of the group."""
    return values.float().sum() / max(1, values.numel())
