"""Tests for unlearnkit.losses and unlearnkit.methods against hand-computed values.

Logits are chosen so that softmax is easy by hand: logits [0, ln 2, 0] give p = [1/4, 1/2, 1/4]
(exp values 1, 2, 1 over a sum of 4), all-zero logits over V tokens give p = 1/V.
"""

from __future__ import annotations

import math

import pytest
import torch

from unlearnkit.config import MethodConfig
from unlearnkit.losses import (
    IGNORE_INDEX,
    answer_nll,
    answer_nll_sum,
    forward_kl,
    gradient_ascent_loss,
    next_token_mask,
    token_nll,
)
from unlearnkit.methods import METHODS, StepTerms

LN2, LN3 = math.log(2.0), math.log(3.0)
X = IGNORE_INDEX


def logits_of(rows: list[list[list[float]]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


# ------------------------------------------------------------------------------------------ answer_nll
def test_uniform_logits_give_ln_vocab_per_token() -> None:
    # V=3, all logits 0 -> p = 1/3 for every token -> NLL = ln 3 at each valid position; mean = ln 3.
    logits = torch.zeros(1, 4, 3)
    labels = torch.tensor([[X, 0, 2, 1]])
    assert answer_nll(logits, labels).tolist() == pytest.approx([LN3], abs=1e-6)


def test_known_distribution_and_shift_position_t_predicts_label_t_plus_1() -> None:
    # Position 0: logits [0, ln2, 0] -> p = [1/4, 1/2, 1/4]; it predicts label[1] = 1 -> NLL = ln 2.
    # Position 1: logits [0, 0, ln6]  -> p = [1/8, 1/8, 6/8];  it predicts label[2] = 2 -> NLL = ln(4/3).
    # Position 2: predicts past the end; its logits (huge, favouring token 0) must be ignored.
    # Mean over the 2 valid labels = (ln 2 + ln 4/3) / 2 = ln(8/3) / 2 = 0.4904146...
    logits = logits_of([[[0.0, LN2, 0.0], [0.0, 0.0, math.log(6.0)], [50.0, 0.0, 0.0]]])
    expected = (LN2 + math.log(4.0 / 3.0)) / 2
    assert answer_nll(logits, torch.tensor([[X, 1, 2]])).item() == pytest.approx(expected, abs=1e-6)
    # label[0] has no predicting position: a valid id there changes nothing.
    assert answer_nll(logits, torch.tensor([[0, 1, 2]])).item() == pytest.approx(expected, abs=1e-6)
    # (An unshifted implementation, position t scoring label t, would give (ln 8 + ~50)/2 ~ 26.)


def test_masked_labels_do_not_count() -> None:
    # Same logits as above; only label[2] is valid -> NLL = ln(4/3) exactly (label[1] masked).
    logits = logits_of([[[0.0, LN2, 0.0], [0.0, 0.0, math.log(6.0)], [0.0, 0.0, 0.0]]])
    assert answer_nll(logits, torch.tensor([[X, X, 2]])).item() == pytest.approx(math.log(4.0 / 3.0), abs=1e-6)
    # Only label[1] valid -> ln 2.
    assert answer_nll(logits, torch.tensor([[X, 1, X]])).item() == pytest.approx(LN2, abs=1e-6)


def test_mean_is_per_sequence_not_per_batch_token() -> None:
    # Sequence A: 2 valid labels with NLL ln 2 and ln(4/3)  -> mean ln(8/3)/2 = 0.4904
    # Sequence B: 1 valid label, position 0 logits [0, ln2, 0], label 0 -> p = 1/4 -> NLL = ln 4 = 1.3863
    # (a batch-token mean would give (ln2 + ln4/3 + ln4)/3 = 0.7890 for both.)
    logits = logits_of(
        [
            [[0.0, LN2, 0.0], [0.0, 0.0, math.log(6.0)], [0.0, 0.0, 0.0]],
            [[0.0, LN2, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[X, 1, 2], [X, 0, X]])
    out = answer_nll(logits, labels)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([math.log(8.0 / 3.0) / 2, math.log(4.0)], abs=1e-6)


def test_all_masked_sequence_is_exactly_zero_and_gradient_finite() -> None:
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.tensor([[X, X, X, X], [X, 1, 2, 3]])
    out = answer_nll(logits, labels)
    assert out[0].item() == 0.0
    assert torch.isfinite(out).all()

    all_masked = torch.full((2, 4), X)
    loss = answer_nll(logits, all_masked).sum()
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.count_nonzero(logits.grad) == 0  # nothing counts, so nothing moves


def test_bf16_logits_give_float32_close_to_fp32() -> None:
    torch.manual_seed(0)
    logits32 = torch.randn(2, 6, 11) * 3
    logits16 = logits32.to(torch.bfloat16)
    labels = torch.tensor([[X, X, 3, 4, 5, X], [X, 1, 2, 3, 4, 10]])
    out16 = answer_nll(logits16, labels)
    assert out16.dtype == torch.float32
    # Same bf16-rounded values computed in fp32: identical maths, so equal to float rounding.
    torch.testing.assert_close(out16, answer_nll(logits16.float(), labels), rtol=1e-6, atol=1e-6)
    # And close to the unrounded fp32 logits (bf16 keeps ~3 significant digits).
    torch.testing.assert_close(out16, answer_nll(logits32, labels), rtol=2e-2, atol=2e-2)


def test_token_nll_shapes_and_answer_nll_sum() -> None:
    # token_nll: [B, T-1] with 0 on ignored positions; answer_nll_sum: (sum, count) per sequence.
    logits = logits_of([[[0.0, LN2, 0.0], [0.0, 0.0, math.log(6.0)], [0.0, 0.0, 0.0]]])
    nll, valid = token_nll(logits, torch.tensor([[X, X, 2]]))
    assert nll.shape == valid.shape == (1, 2)
    assert valid.tolist() == [[False, True]]
    assert nll[0].tolist() == pytest.approx([0.0, math.log(4.0 / 3.0)], abs=1e-6)
    total, count = answer_nll_sum(logits, torch.tensor([[X, 1, 2]]))
    assert total.tolist() == pytest.approx([LN2 + math.log(4.0 / 3.0)], abs=1e-6)  # ln(8/3)
    assert count.tolist() == [2]


def test_gradient_ascent_loss_is_negated_batch_mean() -> None:
    # Per-sequence NLLs from the per-sequence test: ln(8/3)/2 and ln 4 -> loss = -(0.4904 + 1.3863)/2.
    logits = logits_of(
        [
            [[0.0, LN2, 0.0], [0.0, 0.0, math.log(6.0)], [0.0, 0.0, 0.0]],
            [[0.0, LN2, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[X, 1, 2], [X, 0, X]])
    expected = -(math.log(8.0 / 3.0) / 2 + math.log(4.0)) / 2
    loss = gradient_ascent_loss(logits, labels)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_gradient_ascent_gradient_lowers_the_label_logit() -> None:
    # NLL = -log p(label) has dNLL/dz = p - onehot; L_fgt = -NLL has gradient onehot - p.
    # Uniform p = 1/3, label 1 at position 0 -> grad = [-1/3, 2/3, -1/3]: a descent step (z -= lr*grad)
    # LOWERS the label's logit, i.e. raises its NLL.  Position 1 predicts past the end: zero gradient.
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    labels = torch.tensor([[X, 1]])
    gradient_ascent_loss(logits, labels).backward()
    assert logits.grad[0, 0].tolist() == pytest.approx([-1 / 3, 2 / 3, -1 / 3], abs=1e-6)
    assert logits.grad[0, 1].tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------ forward_kl
KL_REF_POL = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # = 0.5 ln(4/3) = 0.1438410
KL_POL_REF = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # reverse direction = 0.1308120


def test_kl_is_zero_for_equal_distributions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert forward_kl(logits, logits.clone(), mask).item() == pytest.approx(0.0, abs=1e-7)
    # Shifting all logits by a constant keeps the distribution: still 0.
    assert forward_kl(logits + 5.0, logits, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_two_token_hand_example_and_direction() -> None:
    # reference logits [0, 0] -> p_ref = [1/2, 1/2]; policy logits [0, ln 3] -> p_pol = [1/4, 3/4].
    # KL(ref || pol) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.1438410;  KL(pol || ref) = 0.1308120.
    assert KL_REF_POL == pytest.approx(0.5 * math.log(4.0 / 3.0))
    assert abs(KL_REF_POL - KL_POL_REF) > 0.01  # the example tells the directions apart
    reference = logits_of([[[0.0, 0.0]]])
    policy = logits_of([[[0.0, LN3]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    kl = forward_kl(policy, reference, mask)
    assert kl.dim() == 0 and kl.dtype == torch.float32
    assert kl.item() == pytest.approx(KL_REF_POL, abs=1e-6)
    # Swapping the arguments gives the other direction.
    assert forward_kl(reference, policy, mask).item() == pytest.approx(KL_POL_REF, abs=1e-6)


def test_kl_masking_and_mean_over_valid_positions_across_batch() -> None:
    # Position kinds (V=2):
    #   a: ref [1/2,1/2], pol [1/4,3/4]  -> KL = 0.1438410 (KL_REF_POL)
    #   b: ref [3/4,1/4] (logits [ln3,0]), pol [1/2,1/2] -> 0.75 ln 1.5 + 0.25 ln 0.5 = 0.1308120
    #   z: ref == pol -> 0
    #   junk: very different distributions, masked out.
    # seq0 = [a, junk(masked)], seq1 = [b, z]: token mean = (a + b + 0)/3 = 0.0915510
    # (a mean of per-sequence means would be (a + b/2)/2 = 0.1046235; including junk would be far larger).
    b_value = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    reference = logits_of([[[0.0, 0.0], [20.0, 0.0]], [[LN3, 0.0], [1.0, 2.0]]])
    policy = logits_of([[[0.0, LN3], [0.0, 20.0]], [[0.0, 0.0], [1.0, 2.0]]])
    mask = torch.tensor([[True, False], [True, True]])
    expected = (KL_REF_POL + b_value + 0.0) / 3
    assert forward_kl(policy, reference, mask).item() == pytest.approx(expected, abs=1e-6)
    # Only the junk position valid: KL of ~ one-hot(0) vs ~ one-hot(1) is about 20 nats.
    only_junk = torch.tensor([[False, True], [False, False]])
    assert forward_kl(policy, reference, only_junk).item() == pytest.approx(20.0, abs=1e-3)


def test_kl_all_masked_is_zero_with_finite_gradient() -> None:
    torch.manual_seed(0)
    policy = torch.randn(2, 3, 5, requires_grad=True)
    reference = torch.randn(2, 3, 5)
    kl = forward_kl(policy, reference, torch.zeros(2, 3, dtype=torch.bool))
    assert kl.item() == 0.0
    kl.backward()
    assert torch.isfinite(policy.grad).all()
    assert torch.count_nonzero(policy.grad) == 0


def test_kl_gradient_reaches_policy_only() -> None:
    # dKL(ref||pol)/d z_pol = p_pol - p_ref = [1/4 - 1/2, 3/4 - 1/2] = [-1/4, 1/4] (one valid position).
    policy = logits_of([[[0.0, LN3]]]).requires_grad_()
    reference = logits_of([[[0.0, 0.0]]]).requires_grad_()
    forward_kl(policy, reference, torch.ones(1, 1, dtype=torch.bool)).backward()
    assert policy.grad[0, 0].tolist() == pytest.approx([-0.25, 0.25], abs=1e-6)
    assert reference.grad is None


def test_kl_bf16_inputs() -> None:
    torch.manual_seed(1)
    policy32, reference32 = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    policy16, reference16 = policy32.bfloat16(), reference32.bfloat16()
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    kl16 = forward_kl(policy16, reference16, mask)
    assert kl16.dtype == torch.float32
    torch.testing.assert_close(kl16, forward_kl(policy16.float(), reference16.float(), mask), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kl16, forward_kl(policy32, reference32, mask), rtol=3e-2, atol=3e-2)


def test_next_token_mask_right_padding() -> None:
    # Position t counts when tokens t and t+1 are both real; the last real token predicts padding.
    attention = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    mask = next_token_mask(attention)
    assert mask.dtype == torch.bool
    assert mask.int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]]


def test_kl_with_next_token_mask_ignores_padding_positions() -> None:
    # Real tokens 0..1 of a right-padded row: only position 0 counts (hand example a there);
    # the padding positions carry junk and must not count.
    reference = logits_of([[[0.0, 0.0], [30.0, 0.0], [30.0, 0.0]]])
    policy = logits_of([[[0.0, LN3], [0.0, 30.0], [0.0, 30.0]]])
    mask = next_token_mask(torch.tensor([[1, 1, 0]]))
    assert forward_kl(policy, reference, mask).item() == pytest.approx(KL_REF_POL, abs=1e-6)


# ------------------------------------------------------------------------------------------ methods
# forget_nll [B=2] = [1, 3] -> mean 2; mismatch_nll [B*K=4] = [1, 2, 3, 6] -> mean 3;
# template mismatch [B=2] = [0.5, 1.5] -> mean 1; kl = 0.25; weights w_f=0.3, w_r=2, w_n=4.
#   ga             = -0.3*2                    = -0.6
#   ga_mismatch    = -0.6 + 2*3                =  5.4
#   ga_kl          = -0.6 + 4*0.25             =  0.4
#   ga_mismatch_kl = -0.6 + 6 + 1              =  6.4
#   templated      = -0.6 + 2*1 + 1            =  2.4
PAPER_METHODS = {
    # name: (mismatch_source, uses_kl, expected loss)
    "ga": (None, False, -0.6),
    "ga_mismatch": ("normal", False, 5.4),
    "ga_kl": (None, True, 0.4),
    "ga_mismatch_kl": ("normal", True, 6.4),
    "templated": ("template", True, 2.4),
}
WEIGHTS = MethodConfig(w_forget=0.3, w_mismatch=2.0, w_normal=4.0)


def terms_for(source: str | None) -> StepTerms:
    mismatch = {"normal": [1.0, 2.0, 3.0, 6.0], "template": [0.5, 1.5], None: None}[source]
    return StepTerms(
        forget_nll=torch.tensor([1.0, 3.0], requires_grad=True),
        mismatch_nll=None if mismatch is None else torch.tensor(mismatch, requires_grad=True),
        kl=torch.tensor(0.25, requires_grad=True),
    )


def test_paper_methods_are_registered() -> None:
    assert set(PAPER_METHODS) <= set(METHODS)
    assert METHODS["ga_mismatch_kl"] is not None and MethodConfig().name == "ga_mismatch_kl"


@pytest.mark.parametrize("name", sorted(PAPER_METHODS))
def test_method_declares_groups_and_combines_terms(name: str) -> None:
    source, uses_kl, expected = PAPER_METHODS[name]
    method = METHODS[name]
    assert method.mismatch_source == source
    assert method.uses_kl is uses_kl
    assert method.summary
    terms = terms_for(source)
    loss = method.combine(terms, WEIGHTS)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # Gradient ascent: d loss / d forget_nll_i = -w_f / B = -0.15 (so descent RAISES the forget NLL).
    assert terms.forget_nll.grad.tolist() == pytest.approx([-0.15, -0.15])
    if source is not None:
        n = terms.mismatch_nll.numel()
        assert terms.mismatch_nll.grad.tolist() == pytest.approx([2.0 / n] * n)  # w_r / count
    assert (terms.kl.grad is not None and terms.kl.grad.item() == pytest.approx(4.0)) is uses_kl


def test_methods_ignore_terms_they_do_not_use() -> None:
    # ga must give the same loss whether or not mismatch/KL terms are present.
    full = StepTerms(torch.tensor([1.0, 3.0]), torch.tensor([100.0] * 4), torch.tensor(100.0))
    assert METHODS["ga"].combine(full, WEIGHTS).item() == pytest.approx(-0.6)
    assert METHODS["ga_kl"].combine(full, WEIGHTS).item() == pytest.approx(-0.6 + 400.0)
    assert METHODS["ga_mismatch"].combine(full, WEIGHTS).item() == pytest.approx(-0.6 + 200.0)


def test_every_registered_method_is_well_formed() -> None:
    for name, method in METHODS.items():
        assert method.mismatch_source in (None, "normal", "template"), name
        assert isinstance(method.uses_kl, bool), name
        assert method.summary.strip(), name


# ------------------------------------------------------------------------------------------ the field's losses
from unlearnkit.losses import (  # noqa: E402  (kept with the tests that use them)
    answer_logprob,
    dpo_loss,
    masked_mse,
    npo_loss,
    npo_weight,
    rmu_direction,
    rmu_losses,
    simnpo_loss,
)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_answer_logprob_is_minus_summed_nll() -> None:
    # V=2, zero logits: each valid token has log p = -ln 2; two valid tokens -> -2 ln 2; none valid -> 0.
    logits = torch.zeros(2, 4, 2)
    labels = torch.tensor([[X, 0, 1, X], [X, X, X, X]])
    assert answer_logprob(logits, labels).tolist() == pytest.approx([-2 * LN2, 0.0], abs=1e-6)


def test_npo_loss_hand_value_and_adaptive_weight() -> None:
    # beta=0.5, log ratios d = [0, -2]:  L = -(2/0.5) * mean(log s(0), log s(1)) = 2 (ln 2 + ln(1 + e^-1)).
    policy = torch.tensor([-2.0, -4.0], requires_grad=True)
    reference = torch.tensor([-2.0, -2.0])
    loss = npo_loss(policy, reference, beta=0.5)
    assert loss.item() == pytest.approx(-4.0 * (log_sigmoid(0.0) + log_sigmoid(1.0)) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(2 * (LN2 + math.log1p(math.exp(-1.0))), abs=1e-6)
    loss.backward()
    # dL/dlogp_i = W_i / B with W_i = 2 sigmoid(beta d_i) = [1, 2 s(-1)].
    weight = npo_weight(policy.detach(), reference, 0.5)
    assert weight.tolist() == pytest.approx([1.0, 2 / (1 + math.e)], abs=1e-6)
    assert policy.grad.tolist() == pytest.approx((weight / 2).tolist(), abs=1e-6)


def test_npo_limits_of_the_paper() -> None:
    policy, reference = torch.tensor([-1.0, -7.0, -12.0]), torch.tensor([-3.0, -2.0, -2.0])
    # beta -> 0: W -> 1 (plain gradient ascent on log pi) and L - 2 ln2 / beta -> mean log ratio.
    assert npo_weight(policy, reference, 1e-6).tolist() == pytest.approx([1.0] * 3, abs=1e-4)
    assert npo_loss(policy, reference, 1e-4).item() - 2 * LN2 / 1e-4 == pytest.approx((2 - 5 - 10) / 3, abs=1e-2)
    # Forgotten (log pi << log pi_ref): the weight and so the gradient vanish; far above the reference W -> 2.
    assert npo_weight(torch.tensor([-500.0]), torch.tensor([0.0]), 0.1).item() < 1e-20
    assert npo_weight(torch.tensor([500.0]), torch.tensor([0.0]), 0.1).item() == pytest.approx(2.0)
    # The reference is a constant; an empty batch gives 0.
    reference = reference.clone().requires_grad_(True)
    npo_loss(policy.clone().requires_grad_(True), reference, 0.1).backward()
    assert reference.grad is None
    assert npo_loss(torch.zeros(0), torch.zeros(0), 0.1).item() == 0.0


def test_simnpo_loss_hand_value_and_ga_limit() -> None:
    # beta=2, gamma=0.5, mean NLL [1, 2]: L = -(2/2) mean(log s(2*1-0.5), log s(2*2-0.5)).
    nll = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = simnpo_loss(nll, beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx(-(log_sigmoid(1.5) + log_sigmoid(3.5)) / 2, abs=1e-6)
    loss.backward()
    # dL/dnll_i = -(2/beta) * beta * s(-(beta nll_i - gamma)) / B = -s(-(2 nll_i - 0.5)).
    expected = [-1 / (1 + math.exp(1.5)), -1 / (1 + math.exp(3.5))]
    assert nll.grad.tolist() == pytest.approx(expected, abs=1e-6)
    # beta -> 0, gamma 0: gradient -> -1/B per sequence, i.e. gradient ascent on the length-normalised NLL.
    nll = torch.tensor([1.0, 5.0], requires_grad=True)
    simnpo_loss(nll, beta=1e-5, gamma=0.0).backward()
    assert nll.grad.tolist() == pytest.approx([-0.5, -0.5], abs=1e-4)


def test_dpo_loss_hand_value_and_gradient_signs() -> None:
    # beta=0.5: ((-1) - (-2)) - ((-3) - (-2)) = 2 -> L = -log s(1) = ln(1 + e^-1).
    preferred, dispreferred = torch.tensor([-1.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    loss = dpo_loss(preferred, dispreferred, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    loss.backward()
    # Descent raises the preferred answer's log-prob and lowers the dispreferred one's.
    assert preferred.grad.item() < 0 < dispreferred.grad.item()
    assert preferred.grad.item() == pytest.approx(-0.5 * (1 - 1 / (1 + math.exp(-1.0))), abs=1e-6)


def test_masked_mse_counts_only_valid_positions() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[9.0, 9.0], [0.0, 2.0]]])
    mask = torch.tensor([[True, False], [False, True]])
    # valid: (1,2) -> mean(1, 4) = 2.5 and (0,2) -> mean(0, 4) = 2; mean = 2.25 (target 0).
    assert masked_mse(hidden, torch.zeros(2), mask).item() == pytest.approx(2.25)
    assert masked_mse(hidden, torch.zeros(2), torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0


def test_rmu_direction_and_losses() -> None:
    u = rmu_direction(16, seed=3)
    assert u.shape == (16,) and u.norm().item() == pytest.approx(1.0) and bool((u >= 0).all())
    assert torch.equal(u, rmu_direction(16, seed=3)) and not torch.equal(u, rmu_direction(16, seed=4))
    # D=2, u = (1, 0) by hand: forget token (2, 1), c=2 -> ((0)^2 + 1^2)/2 = 0.5; retain: ((1)^2 + (3)^2)/2 = 5.
    forget_loss, retain_loss = rmu_losses(
        torch.tensor([[[2.0, 1.0]]]), torch.tensor([[True]]),
        torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[0.0, 0.0]]]), torch.tensor([[True]]),
        torch.tensor([1.0, 0.0]), coeff=2.0,
    )
    assert forget_loss.item() == pytest.approx(0.5) and retain_loss.item() == pytest.approx(5.0)
