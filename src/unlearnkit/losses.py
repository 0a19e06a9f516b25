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


# ------------------------------------------------------------------------------------------- the field's methods
# Per-sequence quantities below are plain tensors ([B] summed or mean answer log-probs, [N, T, D] hidden
# states), so these functions do not care how a step computed them (padded batch, packed sequences).


def answer_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each sequence's answer tokens: log pi(y|x) = -sum_t NLL_t. [B] float32."""
    nll, _ = token_nll(logits, labels)
    return -nll.sum(dim=1)


def _mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else values.new_zeros(())


def npo_loss(policy_logp: torch.Tensor, reference_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization (Zhang, Lin, Bai, Mei 2024, arXiv 2404.05868, eq. 3).

        L_NPO = -(2/beta) * mean_i log sigmoid(-beta * (log pi(y_i|x_i) - log pi_ref(y_i|x_i)))

    Args:
        policy_logp: [B] summed answer log-probs under the model being unlearned (gradients flow).
        reference_logp: [B] the same under the original model (a constant).
        beta: inverse temperature > 0.
    Returns:
        scalar float32; 0 for an empty batch. Its gradient is mean_i W_i * grad log pi(y_i|x_i) with the
        adaptive weight W_i = ``npo_weight`` in (0, 2): W -> 1 (gradient ascent on the summed log-prob) as
        beta -> 0, and W -> 0 once the policy's log-prob falls far below the reference's.
    """
    log_ratio = policy_logp.float() - reference_logp.detach().float()
    return _mean_or_zero(-(2.0 / beta) * F.logsigmoid(-beta * log_ratio))


def npo_weight(policy_logp: torch.Tensor, reference_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO's adaptive gradient weight W_i = 2 pi^beta / (pi^beta + pi_ref^beta) = 2 sigmoid(beta * log ratio). [B]"""
    return 2.0 * torch.sigmoid(beta * (policy_logp.float() - reference_logp.float()))


def simnpo_loss(mean_nll: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimNPO (Fan, Liu, Lin, Jia, Zhang, Mei, Liu 2024, "Simplicity Prevails", arXiv 2410.07163, eq. 4).

        L_SimNPO = -(2/beta) * mean_i log sigmoid(-(beta/|y_i|) log pi(y_i|x_i) - gamma)
                 = -(2/beta) * mean_i log sigmoid(beta * meanNLL_i - gamma)

    No reference model: the length-normalised log-prob replaces NPO's log ratio; gamma >= 0 is a margin.

    Args:
        mean_nll: [B] mean answer-token NLL per sequence (``answer_nll``), gradients flow.
    Returns:
        scalar float32; 0 for an empty batch.
    """
    return _mean_or_zero(-(2.0 / beta) * F.logsigmoid(beta * mean_nll.float() - gamma))


def dpo_loss(
    policy_preferred_logp: torch.Tensor,
    policy_dispreferred_logp: torch.Tensor,
    reference_preferred_logp: torch.Tensor,
    reference_dispreferred_logp: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290, eq. 7), as used for unlearning
    with a refusal (TOFU's IdkDPO, Maini et al. 2024) or another alternative as the preferred answer.

        L_DPO = -mean_i log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

    All arguments are [B] summed answer log-probs (reference ones are constants). Scalar float32; 0 if empty.
    """
    preferred = policy_preferred_logp.float() - reference_preferred_logp.detach().float()
    dispreferred = policy_dispreferred_logp.float() - reference_dispreferred_logp.detach().float()
    return _mean_or_zero(-F.logsigmoid(beta * (preferred - dispreferred)))


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid positions of the mean squared error over the hidden dimension.

        MSE = sum_{n,t} mask_{n,t} * mean_d (h_{n,t,d} - target_{n,t,d})^2 / max(1, sum mask)

    Args:
        hidden: [N, T, D] (gradients flow).
        target: [N, T, D] or broadcastable (e.g. [D]); a constant.
        mask: [N, T] bool, positions that count.
    Returns:
        scalar float32; 0 when no position is valid.
    """
    per_position = (hidden.float() - target.detach().float()).pow(2).mean(dim=-1)
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def rmu_direction(hidden_size: int, seed: int) -> torch.Tensor:
    """RMU's fixed random unit vector u [D] (float32): uniform [0, 1) entries, normalised, from ``seed``.

    Li et al. (2024, WMDP) draw u the same way (uniform, then unit norm); seeding makes it the same across a
    run and its resume.
    """
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden_size, generator=generator)
    return u / u.norm()


def rmu_losses(
    forget_hidden: torch.Tensor,
    forget_mask: torch.Tensor,
    retain_hidden: torch.Tensor,
    reference_retain_hidden: torch.Tensor,
    retain_mask: torch.Tensor,
    direction: torch.Tensor,
    coeff: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Representation Misdirection for Unlearning (Li et al. 2024, WMDP, arXiv 2403.03218, section 5).

        L_forget = MSE(h_policy(forget tokens), coeff * u)
        L_retain = MSE(h_policy(retain tokens), h_reference(retain tokens))
        L_RMU    = L_forget + alpha * L_retain   (alpha applied by the method)

    Args:
        forget_hidden: [B, T, D] policy hidden states at the chosen layer; forget_mask [B, T].
        retain_hidden / reference_retain_hidden: [N, T', D]; retain_mask [N, T'].
        direction: [D] unit vector u; coeff: its scale c.
    Returns:
        (L_forget, L_retain), scalars float32.
    """
    target = coeff * direction.to(forget_hidden.device)
    return masked_mse(forget_hidden, target, forget_mask), masked_mse(retain_hidden, reference_retain_hidden, retain_mask)


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
