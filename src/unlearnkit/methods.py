"""Unlearning methods: each is a small function combining loss terms, listed in one registry dict.

A method declares what a step needs (``Needs``: which extra sequence groups the batcher builds,
reference log-probs, hidden states) and combines the step's terms (``StepTerms``) into one loss. The
step engine (unlearnkit.step) computes exactly the ``StepNeeds`` those needs translate to
(``Needs.step_needs``): per-sequence answer NLLs of which groups, reference NLLs, the KL group, hidden
states. The paper's methods (Yao, Xu, Liu 2023) come first and are fixed; the field's later methods
take a ``regularizer`` (none, kl, retain_nll) where their authors use one, so a run's needs come from
``resolve_needs(method, config)``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from unlearnkit.losses import dpo_loss, npo_loss, rmu_direction, rmu_losses, simnpo_loss


class MethodSettings(Protocol):
    """The settings a method reads: the weights and hyper-parameters of a run's method section.

    ``config.MethodConfig`` has every one of them (tested), but methods name only this, so the
    dependency runs one way: config -> methods (the config checks method names and needs against
    METHODS) -> losses; methods never import the config."""

    name: str
    regularizer: str
    w_forget: float
    w_mismatch: float
    w_normal: float
    w_retain: float
    npo_beta: float
    simnpo_beta: float
    simnpo_gamma: float
    dpo_beta: float
    rmu_coeff: float
    rmu_alpha: float
    rmu_seed: int


# Refusals the idk_* methods train towards; one is drawn per forget example from (seed, step).
REFUSALS: tuple[str, ...] = (
    "I don't know.",
    "I'm not able to help with that.",
    "Sorry, I can't answer that one.",
    "I have no information I can share about that.",
    "That's not something I can help with.",
    "I'm afraid I don't have an answer for you.",
    "I'd rather not answer that question.",
    "I can't assist with this request.",
    "Unfortunately, that is outside what I can answer.",
    "I'm not sure, and I won't guess.",
    "That isn't something I know about.",
    "I don't have an answer to that.",
    "I must decline to respond to this.",
    "No idea, I'm sorry.",
    "I can't provide that information.",
    "I'm unable to give you an answer here.",
)


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
class Needs:
    """What one step of a method must compute; everything else is skipped.

    mismatch: extra group "mismatch" of forget prompts with "normal" (K drawn normal answers) or "template" answers.
    preferred: extra group "preferred" of forget prompts with a preferred answer: "refusal" (drawn from
        REFUSALS) or "column" (``forget_preferred_column`` of the forget data).
    kl: KL(original || current) on the "normal" group (a no-grad reference forward).
    retain_nll: per-sequence answer NLL of the "normal" group.
    reference_logprobs: per-sequence answer NLL of the "forget" (and "preferred") group under the reference,
        no gradient (NPO, DPO).
    hidden_states: policy hidden states at ``rmu_layer`` on "forget" answer tokens and "normal" tokens, and
        the reference's on "normal" tokens (RMU).

    The ``*_group(s)`` properties name the same in the step engine's terms (groups whose per-sequence NLL,
    reference NLL, KL, hidden states a step computes).
    """

    mismatch: str | None = None
    preferred: str | None = None
    kl: bool = False
    retain_nll: bool = False
    reference_logprobs: bool = False
    hidden_states: bool = False

    @property
    def normal(self) -> bool:
        """Whether a step needs normal (retain) sequences."""
        return self.kl or self.retain_nll or self.hidden_states or self.mismatch == "normal"

    @property
    def reference(self) -> bool:
        """Whether the run needs the original model (frozen copy, or the adapter disabled with LoRA)."""
        return self.kl or self.reference_logprobs or self.hidden_states

    @property
    def nll_groups(self) -> tuple[str, ...]:
        groups = ["forget"] + (["mismatch"] if self.mismatch else []) + (["preferred"] if self.preferred else [])
        return tuple(groups + (["normal"] if self.retain_nll else []))

    @property
    def reference_nll_groups(self) -> tuple[str, ...]:
        return (("forget", "preferred") if self.preferred else ("forget",)) if self.reference_logprobs else ()

    @property
    def kl_group(self) -> str | None:
        return "normal" if self.kl else None

    @property
    def hidden_groups(self) -> tuple[str, ...]:
        """Groups whose hidden states (policy; reference for "normal") at the chosen layer the loss reads."""
        return ("forget", "normal") if self.hidden_states else ()

    @property
    def step_needs(self) -> StepNeeds:
        """The same needs in the step engine's terms."""
        return StepNeeds(nll_groups=self.nll_groups, reference_nll_groups=self.reference_nll_groups,
                         kl_group=self.kl_group, hidden_groups=self.hidden_groups)


@dataclass
class StepTerms:
    """Loss terms of one step (each computed only when the method needs it).

    forget_nll: [B] mean answer NLL of each forget example (always: logged, and the stop rule reads it).
    mismatch_nll: [B*K] (or [B] for a template reply) mean answer NLL of each mismatch sequence.
    kl: scalar KL(original || current) per valid normal-data token.

    By group name ("forget", "preferred", "normal"; filled for the groups a method's Needs names):
    nll_sum / tokens: [n] summed answer NLL and answer-token count of each sequence (policy, with gradient).
    reference_nll_sum: [n] summed answer NLL of each sequence under the original model (no gradient).
    hidden / hidden_mask: [n, T, D] policy hidden states at the chosen layer and [n, T] the positions that
        count (forget: answer tokens; normal: every real token); reference_hidden: the original model's.
    logged: extra scalars a method reports for the training log (e.g. its own loss parts).
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
    logged: dict[str, float] = field(default_factory=dict)

    def mean_nll(self, group: str) -> torch.Tensor:
        """[n] mean answer NLL per sequence of ``group``."""
        return _need(self.nll_sum, group, "nll_sum") / _need(self.tokens, group, "tokens").clamp(min=1)

    def logprob(self, group: str) -> torch.Tensor:
        """[n] summed answer log-prob log pi(y|x) per sequence of ``group`` (policy, with gradient)."""
        return -_need(self.nll_sum, group, "nll_sum")

    def reference_logprob(self, group: str) -> torch.Tensor:
        """[n] summed answer log-prob per sequence of ``group`` under the original model."""
        return -_need(self.reference_nll_sum, group, "reference_nll_sum")


def _need(values: dict[str, torch.Tensor], group: str, name: str) -> torch.Tensor:
    if group not in values:
        raise ValueError(f"this method needs step term {name}[{group!r}], which the step did not compute")
    return values[group]


def _need_term(value: torch.Tensor | None, name: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"this method needs step term {name!r}, which the step did not compute")
    return value


@dataclass(frozen=True)
class Method:
    combine: Callable[[StepTerms, MethodSettings], torch.Tensor]
    needs: Needs
    summary: str
    paper: str = "Yao, Xu, Liu 2023, arXiv 2310.10683"
    # Regularizers a user may choose (besides "auto"); empty for the paper's fixed objectives.
    regularizers: tuple[str, ...] = ()
    default_regularizer: str = "none"

    @property
    def mismatch_source(self) -> str | None:
        return self.needs.mismatch

    @property
    def uses_kl(self) -> bool:
        return self.needs.kl

    @property
    def step_needs(self) -> StepNeeds:
        """The engine's needs with the method's default regularizer (a run's own: ``resolve_needs(...).step_needs``)."""
        return _with_regularizer(self, self.default_regularizer).step_needs


def regularizer_of(method: Method, config: MethodSettings) -> str:
    """The regularizer a run uses: the configured one, or the method's default for ``auto``."""
    return method.default_regularizer if config.regularizer == "auto" else config.regularizer


def resolve_needs(method: Method, config: MethodSettings) -> Needs:
    """The method's own needs plus those of its regularizer."""
    return _with_regularizer(method, regularizer_of(method, config))


def _with_regularizer(method: Method, chosen: str) -> Needs:
    if not method.regularizers:
        return method.needs
    return dataclasses.replace(method.needs, kl=chosen == "kl", retain_nll=chosen == "retain_nll")


# ------------------------------------------------------------------------------------------- the paper's methods
def _ga(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    """w_fgt * L_fgt with L_fgt = -mean NLL(forget answer | forget prompt)."""
    return -c.w_forget * t.forget_nll.mean()


def _ga_mismatch(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    return _ga(t, c) + c.w_mismatch * _need_term(t.mismatch_nll, "mismatch_nll").mean()


def _ga_kl(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    return _ga(t, c) + c.w_normal * _need_term(t.kl, "kl")


def _ga_mismatch_kl(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    """The paper's full objective: w_fgt*L_fgt + w_rdn*L_rdn + w_nor*L_nor."""
    return _ga_mismatch(t, c) + c.w_normal * _need_term(t.kl, "kl")


def _finetune(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    """Plain gradient DEscent on the forget set: plants memorized text (copyright scenario set-up)."""
    return t.forget_nll.mean()


# ------------------------------------------------------------------------------------------- the field's methods
def _regularizer(t: StepTerms, c: MethodSettings) -> torch.Tensor | float:
    """R = w_normal * KL(original||current) on normal data, or w_retain * mean NLL(normal answers), or 0."""
    chosen = regularizer_of(METHODS[c.name], c) if c.name in METHODS else c.regularizer
    if chosen == "kl":
        return c.w_normal * _need_term(t.kl, "kl")
    if chosen == "retain_nll":
        return c.w_retain * t.mean_nll("normal").mean()
    return 0.0


def _log(t: StepTerms, **parts: torch.Tensor) -> None:
    t.logged.update({name: float(value.detach()) for name, value in parts.items()})


def _grad_diff(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    """Gradient difference (Liu et al. 2022, "Continual learning and private unlearning"; TOFU, Maini et al. 2024):

        L = -mean_i NLL(y_i | x_i)  +  R,   R = w_retain * mean_j NLL(normal answer_j | normal prompt_j)
    """
    return -t.forget_nll.mean() + _regularizer(t, c)


def _npo(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    """NPO (Zhang, Lin, Bai, Mei 2024, "Negative Preference Optimization", arXiv 2404.05868):

        L = -(2/beta) mean_i log sigmoid(-beta (log pi(y_i|x_i) - log pi_ref(y_i|x_i)))  +  R
    log-probs summed over answer tokens; R = retain NLL by default (the paper's NPO+RT).
    """
    npo = npo_loss(t.logprob("forget"), t.reference_logprob("forget"), c.npo_beta)
    _log(t, npo_loss=npo)
    return npo + _regularizer(t, c)


def _simnpo(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    """SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking NPO for LLM Unlearning", arXiv 2410.07163):

        L = -(2/beta) mean_i log sigmoid(-(beta/|y_i|) log pi(y_i|x_i) - gamma)  +  R      (no reference model)
    """
    simnpo = simnpo_loss(t.forget_nll, c.simnpo_beta, c.simnpo_gamma)
    _log(t, simnpo_loss=simnpo)
    return simnpo + _regularizer(t, c)


def _idk_nll(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    """IDK fine-tuning (TOFU, Maini et al. 2024, arXiv 2401.06121): learn a refusal for each forget prompt.

        L = mean_i NLL(refusal_i | x_i)  +  R
    """
    return t.mean_nll("preferred").mean() + _regularizer(t, c)


def _preference(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    """DPO with the preferred answer y_w (a refusal for idk_dpo, a given alternative for dpo) over the forget answer y_l
    (Rafailov et al. 2023, arXiv 2305.18290; as an unlearning baseline: TOFU and NPO papers):

        L = -mean_i log sigmoid(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])  +  R
    """
    dpo = dpo_loss(t.logprob("preferred"), t.logprob("forget"), t.reference_logprob("preferred"), t.reference_logprob("forget"),
                   c.dpo_beta)
    _log(t, dpo_loss=dpo)
    return dpo + _regularizer(t, c)


@functools.lru_cache(maxsize=4)
def _direction(hidden_size: int, seed: int) -> torch.Tensor:
    return rmu_direction(hidden_size, seed)


def _rmu(t: StepTerms, c: MethodSettings) -> torch.Tensor:
    """RMU (Li et al. 2024, "The WMDP Benchmark", arXiv 2403.03218, section 5), at layer ``rmu_layer``:

        L = mean_{forget answer tokens} ||h(t) - c u||^2 / D  +  alpha * mean_{normal tokens} ||h(t) - h_ref(t)||^2 / D
    u: a fixed random unit vector (seed ``rmu_seed``); c = rmu_coeff; alpha = rmu_alpha.
    """
    forget_hidden = _need(t.hidden, "forget", "hidden")
    forget_mse, retain_mse = rmu_losses(
        forget_hidden, _need(t.hidden_mask, "forget", "hidden_mask"),
        _need(t.hidden, "normal", "hidden"), _need(t.reference_hidden, "normal", "reference_hidden"),
        _need(t.hidden_mask, "normal", "hidden_mask"),
        _direction(forget_hidden.size(-1), c.rmu_seed), c.rmu_coeff,
    )
    _log(t, rmu_forget_mse=forget_mse, rmu_retain_mse=retain_mse)
    return forget_mse + c.rmu_alpha * retain_mse


_REGULARIZERS = ("none", "kl", "retain_nll")

METHODS: dict[str, Method] = {
    "ga": Method(_ga, Needs(), "gradient ascent on forget answers only"),
    "ga_mismatch": Method(_ga_mismatch, Needs(mismatch="normal"), "gradient ascent + random normal answers to forget prompts"),
    "ga_kl": Method(_ga_kl, Needs(kl=True), "gradient ascent + KL(original||current) on normal data"),
    "ga_mismatch_kl": Method(_ga_mismatch_kl, Needs(mismatch="normal", kl=True),
                             "the paper's full method: GA + random mismatch + KL (default)"),
    "templated": Method(_ga_mismatch_kl, Needs(mismatch="template", kl=True),
                        "GA + a fixed reply (template_reply) as the forget prompts' target + KL"),
    "finetune": Method(_finetune, Needs(), "NOT unlearning: learn the forget set (to plant memorized text for the copyright scenario)"),
    "grad_diff": Method(_grad_diff, Needs(), "gradient ascent on forget answers + NLL on normal (retain) answers",
                        paper="Liu et al. 2022; TOFU, Maini et al. 2024", regularizers=_REGULARIZERS, default_regularizer="retain_nll"),
    "npo": Method(_npo, Needs(reference_logprobs=True), "negative preference optimization on forget answers (beta=npo_beta) + retain NLL",
                  paper="Zhang et al. 2024, arXiv 2404.05868", regularizers=_REGULARIZERS, default_regularizer="retain_nll"),
    "simnpo": Method(_simnpo, Needs(), "reference-free, length-normalised NPO (simnpo_beta, simnpo_gamma) + retain NLL",
                     paper="Fan et al. 2024, arXiv 2410.07163", regularizers=_REGULARIZERS, default_regularizer="retain_nll"),
    "idk_nll": Method(_idk_nll, Needs(preferred="refusal"), "learn a varied refusal ('I don't know') for forget prompts + retain NLL",
                      paper="TOFU, Maini et al. 2024, arXiv 2401.06121", regularizers=_REGULARIZERS, default_regularizer="retain_nll"),
    "idk_dpo": Method(_preference, Needs(preferred="refusal", reference_logprobs=True),
                      "DPO: a refusal preferred over the forget answer (dpo_beta) + retain NLL",
                      paper="Rafailov et al. 2023; TOFU / NPO papers' IdkDPO", regularizers=_REGULARIZERS, default_regularizer="retain_nll"),
    "dpo": Method(_preference, Needs(preferred="column", reference_logprobs=True),
                  "DPO: the forget set's alternative answer (forget_preferred_column) preferred over the forget answer",
                  paper="Rafailov et al. 2023, arXiv 2305.18290", regularizers=_REGULARIZERS, default_regularizer="none"),
    "rmu": Method(_rmu, Needs(hidden_states=True),
                  "steer layer rmu_layer's activations on forget answers to rmu_coeff*u, keep them on normal data (rmu_alpha)",
                  paper="Li et al. 2024 (WMDP), arXiv 2403.03218"),
}
