"""Unlearning methods: each is a small function combining loss terms, listed in one registry dict.

A method declares which sequence groups a step needs (mismatch answers from the normal set, a fixed
template reply, normal data for the KL term), what the step engine must compute from them
(``StepNeeds``: per-sequence answer NLLs of which groups, reference NLLs, the KL group), and
combines the per-step terms into the loss. The engine (unlearnkit.step) computes just that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:  # methods read only the weights; importing config here would make a cycle
    from unlearnkit.config import MethodConfig


@dataclass
class StepTerms:
    """Loss terms of one step (each computed only when the method needs it).

    forget_nll: [B] mean answer NLL of each forget example.
    mismatch_nll: [B*K] (or [B] for a template reply) mean answer NLL of each mismatch sequence.
    kl: scalar KL(original || current) per valid normal-data token.

    Extra, by group name (filled for the groups a method's StepNeeds names):
    nll_sum / tokens: [n] summed answer NLL and answer-token count of each sequence (policy, with gradient).
    reference_nll_sum: [n] summed answer NLL of each sequence under the original model (no gradient).
    hidden / hidden_mask / reference_hidden: [n, T, D] hidden states at the asked layer, [n, T] bool
        positions that count, and the original model's hidden states (see StepNeeds.hidden_groups).
    """

    forget_nll: torch.Tensor
    mismatch_nll: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    nll_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    reference_nll_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    hidden: dict[str, torch.Tensor] = field(default_factory=dict)
    hidden_mask: dict[str, torch.Tensor] = field(default_factory=dict)
    reference_hidden: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class StepNeeds:
    """What one step must compute: the engine runs the groups named here and applies the LM head only
    at the positions these terms read.

    nll_groups: groups whose per-sequence answer NLL (policy, with gradient) the loss reads.
    reference_nll_groups: groups whose per-sequence answer NLL under the original model (no gradient) it reads.
    kl_group: the group whose every next token carries KL(original || current), or None.
    hidden_groups: groups whose hidden states at ``hidden_layer`` the loss reads (policy; and the
        original model's for "normal"), as [n, T, D] with a mask (forget-like groups: answer tokens;
        "normal": every real token).
    shared_prompt: groups whose sequences share their prompt (one forget prompt, K+1 answers).
    """

    nll_groups: tuple[str, ...] = ("forget",)
    reference_nll_groups: tuple[str, ...] = ()
    kl_group: str | None = None
    hidden_groups: tuple[str, ...] = ()
    shared_prompt: tuple[str, ...] = ("forget", "mismatch", "preferred")

    @property
    def reference(self) -> bool:
        """Whether the step reads the original model."""
        return self.kl_group is not None or bool(self.reference_nll_groups) or "normal" in self.hidden_groups


@dataclass(frozen=True)
class Method:
    combine: Callable[[StepTerms, "MethodConfig"], torch.Tensor]
    mismatch_source: str | None  # "normal", "template" or None
    uses_kl: bool
    summary: str
    needs: StepNeeds | None = None  # None: derived from mismatch_source and uses_kl

    @property
    def step_needs(self) -> StepNeeds:
        if self.needs is not None:
            return self.needs
        nll = ("forget", "mismatch") if self.mismatch_source else ("forget",)
        return StepNeeds(nll_groups=nll, kl_group="normal" if self.uses_kl else None)


def _ga(t: StepTerms, c: "MethodConfig") -> torch.Tensor:
    """w_fgt * L_fgt with L_fgt = -mean NLL(forget answer | forget prompt)."""
    return -c.w_forget * t.forget_nll.mean()


def _ga_mismatch(t: StepTerms, c: "MethodConfig") -> torch.Tensor:
    assert t.mismatch_nll is not None
    return _ga(t, c) + c.w_mismatch * t.mismatch_nll.mean()


def _ga_kl(t: StepTerms, c: "MethodConfig") -> torch.Tensor:
    assert t.kl is not None
    return _ga(t, c) + c.w_normal * t.kl


def _ga_mismatch_kl(t: StepTerms, c: "MethodConfig") -> torch.Tensor:
    """The paper's full objective: w_fgt*L_fgt + w_rdn*L_rdn + w_nor*L_nor."""
    assert t.kl is not None
    return _ga_mismatch(t, c) + c.w_normal * t.kl


def _finetune(t: StepTerms, c: "MethodConfig") -> torch.Tensor:
    """Plain gradient DEscent on the forget set: plants memorized text (copyright scenario set-up)."""
    return t.forget_nll.mean()


METHODS: dict[str, Method] = {
    "ga": Method(_ga, None, False, "gradient ascent on forget answers only"),
    "ga_mismatch": Method(_ga_mismatch, "normal", False, "gradient ascent + random normal answers to forget prompts"),
    "ga_kl": Method(_ga_kl, None, True, "gradient ascent + KL(original||current) on normal data"),
    "ga_mismatch_kl": Method(_ga_mismatch_kl, "normal", True, "the paper's full method: GA + random mismatch + KL (default)"),
    "templated": Method(
        _ga_mismatch_kl, "template", True, "GA + a fixed reply (template_reply) as the forget prompts' target + KL"
    ),
    "finetune": Method(_finetune, None, False, "NOT unlearning: learn the forget set (to plant memorized text for the copyright scenario)"),
}
