"""Unlearning methods: each is a small function combining loss terms, listed in one registry dict.

A method declares which sequence groups a step needs (mismatch answers from the normal set, a fixed
template reply, normal data for the KL term) and combines the per-step terms into the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from unlearnkit.config import MethodConfig


@dataclass
class StepTerms:
    """Loss terms of one step (each computed only when the method needs it).

    forget_nll: [B] mean answer NLL of each forget example.
    mismatch_nll: [B*K] (or [B] for a template reply) mean answer NLL of each mismatch sequence.
    kl: scalar KL(original || current) per valid normal-data token.
    """

    forget_nll: torch.Tensor
    mismatch_nll: torch.Tensor | None = None
    kl: torch.Tensor | None = None


@dataclass(frozen=True)
class Method:
    combine: Callable[[StepTerms, MethodConfig], torch.Tensor]
    mismatch_source: str | None  # "normal", "template" or None
    uses_kl: bool
    summary: str


def _ga(t: StepTerms, c: MethodConfig) -> torch.Tensor:
    """w_fgt * L_fgt with L_fgt = -mean NLL(forget answer | forget prompt)."""
    return -c.w_forget * t.forget_nll.mean()


def _ga_mismatch(t: StepTerms, c: MethodConfig) -> torch.Tensor:
    assert t.mismatch_nll is not None
    return _ga(t, c) + c.w_mismatch * t.mismatch_nll.mean()


def _ga_kl(t: StepTerms, c: MethodConfig) -> torch.Tensor:
    assert t.kl is not None
    return _ga(t, c) + c.w_normal * t.kl


def _ga_mismatch_kl(t: StepTerms, c: MethodConfig) -> torch.Tensor:
    """The paper's full objective: w_fgt*L_fgt + w_rdn*L_rdn + w_nor*L_nor."""
    assert t.kl is not None
    return _ga_mismatch(t, c) + c.w_normal * t.kl


def _finetune(t: StepTerms, c: MethodConfig) -> torch.Tensor:
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
