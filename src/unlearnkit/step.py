"""One training step's loss terms: packed decoder body, gathered read positions, chunked LM head.

The step (``compute_terms``):
1. packs the sequences of the groups the method needs (unlearnkit.batching): no padding between
   sequences, each forget prompt laid out once for its forget answer and its K mismatch answers,
   attention confined to each prompt tree by a 4-D mask, positions restarting per sequence;
2. runs the decoder body (no LM head) once over the packed rows;
3. gathers the hidden states whose next token a loss reads and applies the LM head to those only, in
   chunks of ``chunk_tokens`` rows; with more than one chunk each chunk is recomputed in backward
   (activation checkpointing) so no [reads, V] float32 tensor of the whole step is ever held;
4. for KL (and reference NLLs) runs the reference body once, without gradient, over just the
   groups that need it, and computes reference logits chunk by chunk next to the policy's.

The result equals the plain per-sequence, padded, full-logits computation (tests/test_step.py
keeps that oracle), up to float rounding.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

from unlearnkit.batching import PackedRows, Reads, pack_step
from unlearnkit.data import StepBatch
from unlearnkit.errors import UserError
from unlearnkit.losses import IGNORE_INDEX
from unlearnkit.losses import masked_mean, per_sequence_sum, read_kl, read_nll
from unlearnkit.methods import StepNeeds, StepTerms
from unlearnkit.modeling import Reference

ATTENTION_PATHS = ("auto", "sdpa", "eager")
"""Attention kernels that honour the packed 4-D mask. ``auto`` = sdpa (on CPU eager measured within
noise of it, docs/performance.md; sdpa is the faster kernel family on GPUs). Flash-attention kernels take no arbitrary mask and
cannot express a shared prompt; they are refused rather than silently attending across sequences."""

DEFAULT_ROW_TOKENS = 512
DEFAULT_CHUNK_TOKENS = 1024
COMPILE_LENGTH_MULTIPLE = 64
"""With the body compiled, packed rows are padded to a multiple of this many tokens: a 512-token row limit
then gives at most 8 row lengths (x the few row counts a step has), each compiled once."""


# ------------------------------------------------------------------------------------------- model parts
def causal_lm_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal LM inside peft / DDP wrappers."""
    while True:
        if hasattr(model, "get_base_model"):  # peft: the LoRA-injected transformers model
            model = model.get_base_model()
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def set_attention(model: torch.nn.Module, attention: str) -> str:
    """Select the attention kernel for packed steps; returns the one in use."""
    if attention not in ATTENTION_PATHS:
        raise UserError(f"attention={attention!r} is not supported; choose one of {', '.join(ATTENTION_PATHS)}")
    chosen = "sdpa" if attention == "auto" else attention
    lm = causal_lm_of(model)
    if lm.config._attn_implementation != chosen:
        lm.set_attn_implementation(chosen)
    return chosen


def compile_unsupported(device: torch.device | str) -> str:
    """Why torch.compile cannot run here ('' when it can): dynamo's own check (Python version, platform)
    and, on CPU, inductor's C++ compiler."""
    import shutil

    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python/platform"
    if torch.device(device).type == "cpu":
        compiler = os.environ.get("CXX", "g++")
        if shutil.which(compiler) is None and shutil.which("c++") is None:
            return f"torch.compile on CPU needs a C++ compiler ({compiler} not found; apt-get install g++)"
    return ""


def compile_body(model: torch.nn.Module) -> None:
    """Compile the decoder body in place (``Module.compile``: parameter names and the state dict stay as they
    are). Shapes are static (rows bucketed by COMPILE_LENGTH_MULTIPLE); the LoRA reference (adapter off) is
    a second graph of the same module. The recompile limit is raised so every bucket keeps its graph."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    body = causal_lm_of(model).base_model
    body.compile(dynamic=False)


def _check_attention(lm: torch.nn.Module) -> str:
    path = lm.config._attn_implementation
    if path not in ("sdpa", "eager"):
        # Other kernels may ignore a 4-D mask: packed sequences would then attend to each other.
        raise UserError(f"attention implementation {path!r} cannot confine packed sequences; set attention=auto, sdpa or eager")
    return path


def hidden_states(model: torch.nn.Module, packed: PackedRows, layer: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states (after the last norm, before the LM head) at every packed position: [R*T, d].

    With ``layer``: also the hidden states after that layer (``hidden_states[layer]`` of the model
    output, 0 = embeddings), as a pair (final, at_layer).
    """
    lm = causal_lm_of(model)
    body = lm.base_model
    if body is lm:
        raise UserError(f"{type(lm).__name__} has no separate decoder body; the packed step needs a transformers causal LM")
    device = lm.get_input_embeddings().weight.device
    path = _check_attention(lm)
    if path == "sdpa":
        mask = packed.attention_bias(torch.float32, device) == 0  # boolean: valid whatever the compute dtype
    else:
        mask = packed.attention_bias(lm.get_input_embeddings().weight.dtype, device)
    out = body(input_ids=packed.input_ids.to(device), attention_mask=mask, position_ids=packed.position_ids.to(device),
               use_cache=False, output_hidden_states=layer is not None)
    hidden = out[0]
    final = hidden.reshape(-1, hidden.shape[-1])
    if layer is None:
        return final
    return final, out.hidden_states[layer].reshape(-1, hidden.shape[-1])


def per_sequence_hidden(flat: torch.Tensor, coords: list[list[int]], step: StepBatch, group: str,
                        answer_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, T, D] hidden states of each sequence of ``group`` (T = its longest) and the [n, T] bool mask of
    positions that count: answer tokens (labels != -100) or, with ``answer_only=False``, every token."""
    sequences = step.sequences[step.slices[group]]
    longest = max(len(c) for c in coords)
    index = torch.zeros(len(coords), longest, dtype=torch.long)
    mask = torch.zeros(len(coords), longest, dtype=torch.bool)
    for s, ((ids, labels), c) in enumerate(zip(sequences, coords)):
        index[s, :len(c)] = torch.tensor(c, dtype=torch.long)
        mask[s, :len(c)] = torch.tensor([x != IGNORE_INDEX for x in labels]) if answer_only else True
    mask = mask.to(flat.device)
    gathered = flat.index_select(0, index.view(-1).to(flat.device)).view(len(coords), longest, -1)
    return gathered * mask[..., None].to(gathered.dtype), mask


def lm_head(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden [n, d] -> logits [n, V] exactly as the model's own forward makes them."""
    lm = causal_lm_of(model)
    head = lm.get_output_embeddings()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    scale = getattr(lm.config, "logit_scale", None) if not hasattr(lm, "logit_scale") else None

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        low_precision = hidden.dtype != torch.float32 or head.weight.dtype != torch.float32
        if type(head) is torch.nn.Linear and (low_precision or torch.is_autocast_enabled(hidden.device.type)):
            # bf16 weights or autocast: the logits are computed in float32 (one chunk at a time), since bf16
            # logits (~3 significant digits) would put rounding noise of ~0.1 nats into every loss and the KL.
            with torch.autocast(hidden.device.type, enabled=False):
                bias = None if head.bias is None else head.bias.float()
                logits = torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)
        else:
            logits = head(hidden)
        if isinstance(scale, (int, float)):
            logits = logits * scale
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return apply


# ------------------------------------------------------------------------------------------- chunks
def _in_chunks(fn: Callable[..., torch.Tensor], tensors: tuple[torch.Tensor, ...], chunk: int) -> torch.Tensor:
    """fn over row chunks of ``tensors``, concatenated. With more than one chunk each call is
    checkpointed: its [chunk, V] logits are freed after the forward and recomputed in backward."""
    n = tensors[0].shape[0]
    if n <= chunk:
        return fn(*tensors)
    parts = [checkpoint(fn, *(t[i:i + chunk] for t in tensors), use_reentrant=False) for i in range(0, n, chunk)]
    return torch.cat(parts)


def _gather(hidden: torch.Tensor, reads: Reads) -> torch.Tensor:
    return hidden.index_select(0, reads.index.to(hidden.device))


def default_needs(step: StepBatch, with_reference: bool) -> StepNeeds:
    """The paper's terms for whatever groups the step holds (used when a caller names no method)."""
    nll = tuple(g for g in ("forget", "mismatch") if g in step.slices)
    return StepNeeds(nll_groups=nll, kl_group="normal" if with_reference and "normal" in step.slices else None)


def _groups(step: StepBatch, needs: Any, reference: bool) -> list[str]:
    """The step's groups a pass must lay out, in the step's order."""
    if reference:
        wanted = set(needs.reference_nll_groups) | ({"normal"} & set(needs.hidden_groups)) | {needs.kl_group}
    else:
        wanted = set(needs.nll_groups) | set(needs.hidden_groups) | {needs.kl_group}
    return [g for g in step.slices if g in wanted]


# ------------------------------------------------------------------------------------------- one step
def compute_terms(
    model: torch.nn.Module,
    reference: Reference | None,
    step: StepBatch,
    needs: Any = None,
    *,
    row_tokens: int = DEFAULT_ROW_TOKENS,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    hidden_layer: int | None = None,
    token_mean: Callable[[int], float] | None = None,
    length_multiple: int = 1,
) -> StepTerms:
    """The loss terms ``needs`` asks for, from one packed policy forward (+ one reference forward).

    ``needs`` is a StepNeeds or anything with the same attributes (nll_groups, reference_nll_groups,
    kl_group, hidden_groups, reference; shared_prompt optional). ``hidden_layer``: the layer whose
    hidden states ``hidden_groups`` reads.

    ``token_mean`` (data-parallel runs): maps this process's count of KL tokens to the mean count over
    all processes. The KL is then sum / mean_count, so that the mean of the processes' KL terms (what
    DDP's gradient averaging takes) is the KL averaged over every valid token of the global step,
    exactly as one process computes it. Default: this process's own count (one process).

    ``length_multiple``: packed rows padded to a multiple of it (compiled bodies; see COMPILE_LENGTH_MULTIPLE).
    """
    needs = needs or default_needs(step, reference is not None)
    shared = getattr(needs, "shared_prompt", StepNeeds.shared_prompt)
    if needs.reference and reference is None:
        raise ValueError("these terms need the reference model")
    if needs.hidden_groups and hidden_layer is None:
        raise ValueError("hidden states asked for without a layer")
    layer = hidden_layer if needs.hidden_groups else None
    packed = pack_step(step, _groups(step, needs, False), shared=shared, row_tokens=row_tokens, pad_id=step.pad_id,
                       length_multiple=length_multiple)
    hidden = hidden_states(model, packed, layer)
    if layer is not None:
        hidden, at_layer = hidden
    policy_head = lm_head(model)
    device = hidden.device

    def nll_of(head: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda rows, targets: read_nll(head(rows), targets)

    terms = StepTerms(forget_nll=torch.zeros(0, device=device))
    for group in needs.nll_groups:
        reads = packed.answer_reads[group]
        values = _in_chunks(nll_of(policy_head), (_gather(hidden, reads), reads.target.to(device)), chunk_tokens)
        terms.nll_sum[group], terms.tokens[group] = per_sequence_sum(values, reads.sequence.to(device), reads.count)
    means = {g: terms.nll_sum[g] / terms.tokens[g].clamp(min=1) for g in terms.nll_sum}
    terms.forget_nll = means.get("forget", terms.forget_nll)
    terms.mismatch_nll = means.get("mismatch")
    for group in needs.hidden_groups:
        terms.hidden[group], terms.hidden_mask[group] = per_sequence_hidden(
            at_layer, packed.coords[group], step, group, answer_only=group != "normal")

    if needs.reference:
        assert reference is not None
        ref_packed = pack_step(step, _groups(step, needs, True), shared=shared, row_tokens=row_tokens, pad_id=step.pad_id,
                               length_multiple=length_multiple)
        ref_layer = layer if "normal" in needs.hidden_groups else None
        with torch.no_grad(), reference.mode(model) as original:
            ref_hidden = hidden_states(original, ref_packed, ref_layer)
            if ref_layer is not None:
                ref_hidden, ref_at_layer = ref_hidden
                terms.reference_hidden["normal"] = per_sequence_hidden(
                    ref_at_layer, ref_packed.coords["normal"], step, "normal", answer_only=False)[0]
            for group in needs.reference_nll_groups:
                reads = ref_packed.answer_reads[group]
                values = _in_chunks(nll_of(lm_head(original)), (_gather(ref_hidden, reads), reads.target.to(device)), chunk_tokens)
                terms.reference_nll_sum[group] = per_sequence_sum(values, reads.sequence.to(device), reads.count)[0]
        if needs.kl_group is not None:
            def kl_rows(policy_rows: torch.Tensor, reference_rows: torch.Tensor) -> torch.Tensor:
                policy_logits = policy_head(policy_rows)
                # Inside the chunk (and so recomputed with it in backward): only one chunk's reference
                # logits exist at a time.
                with torch.no_grad(), reference.mode(model) as original:
                    reference_logits = lm_head(original)(reference_rows)
                return read_kl(policy_logits, reference_logits)

            policy_reads, reference_reads = packed.token_reads[needs.kl_group], ref_packed.token_reads[needs.kl_group]
            values = _in_chunks(kl_rows, (_gather(hidden, policy_reads), _gather(ref_hidden, reference_reads)), chunk_tokens)
            if token_mean is None:
                terms.kl = masked_mean(values)
            else:
                mean_count = token_mean(values.numel())
                terms.kl = values.float().sum() / (mean_count if mean_count > 0 else 1.0)
    return terms


class StepModule(torch.nn.Module):
    """The policy as one module whose forward is ``compute_terms``: what accelerate prepares (wraps in
    DDP). DDP synchronises gradients only for computations that run through its own forward, and the
    packed step calls the decoder body and head directly, so the whole step must be that forward.

    The reference is held outside the module tree: DDP would otherwise broadcast the frozen copy and
    count it among the model's parameters; with LoRA it is ``policy`` itself with the adapter off, so
    ``disable_adapter`` is called on the peft model, never on the DDP wrapper.

    Under FSDP (``holds_reference``) the frozen copy of a full-finetuning reference IS registered (as
    ``reference_copy``): it is sharded with the policy, as units of its own that never get a gradient.
    """

    def __init__(self, policy: torch.nn.Module, reference: Reference | None, holds_reference: bool = False) -> None:
        super().__init__()
        self.policy = policy
        self._reference = [reference]  # a list: not registered as a submodule
        if holds_reference and reference is not None and reference.frozen is not None:
            self.reference_copy = reference.frozen

    def forward(self, step: StepBatch, needs: Any, row_tokens: int = DEFAULT_ROW_TOKENS, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                token_mean: Callable[[int], float] | None = None, hidden_layer: int | None = None,
                length_multiple: int = 1) -> StepTerms:
        return compute_terms(self.policy, self._reference[0], step, needs, row_tokens=row_tokens, chunk_tokens=chunk_tokens,
                             token_mean=token_mean, hidden_layer=hidden_layer, length_multiple=length_multiple)


def step_positions(step: StepBatch, needs: Any, row_tokens: int = DEFAULT_ROW_TOKENS) -> dict[str, Any]:
    """Positions one step computes (packed policy + reference rows, padding included) for the benchmark."""
    shared = getattr(needs, "shared_prompt", StepNeeds.shared_prompt)
    packed = pack_step(step, _groups(step, needs, False), shared=shared, row_tokens=row_tokens)
    out = {"policy_positions": packed.input_ids.numel(), "policy_real": packed.num_positions,
           "reads": sum(int(packed.answer_reads[g].index.numel()) for g in needs.nll_groups)}
    if needs.reference:
        out["reference_positions"] = pack_step(step, _groups(step, needs, True), shared=shared, row_tokens=row_tokens).input_ids.numel()
    return out
