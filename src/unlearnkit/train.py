"""The unlearning loop on accelerate: set-up, one step, stop rules, checkpoints, resume, saving.

Each step runs ONE packed policy forward/backward over the step's sequences and, when the method
reads the original model, one no-grad reference forward over just the groups it needs (the step
engine: unlearnkit.step). Checkpoints hold the trainable weights, optimizer, scheduler, RNG
state and stop-rule state; the batch of a step is a pure function of (seed, step), so a run resumed from
a checkpoint (even after kill -9) ends with the same weights as an uninterrupted one on CPU
(checkpoint format: unlearnkit.checkpoint).

Data parallel (``accelerate launch``, DDP): every process builds the whole step and takes its equal
share (batching.shard_step); the prepared module is the step itself (step.StepModule), so DDP averages
the gradients of the packed forward; loss terms, stop rules, signals and the non-finite check use
values reduced over processes; only the main process writes. FSDP (unlearnkit.sharding): the same
step module is sharded (FSDP2) instead of DDP-wrapped, the optimizer is built over the shards, and
checkpoints and the exported model are gathered whole by every process and written by the main one. Faults: SIGTERM/SIGINT checkpoint and
raise RunInterrupted; a non-finite loss/gradient raises TrainingDiverged before the update; write
failures of the output folder become one UserError line (output_errors).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from unlearnkit import __version__
from unlearnkit.config import MethodConfig, RunConfig, save_config
from unlearnkit.data import (
    QAExample,
    StepBatcher,
    encode_pair,
    format_answer,
    format_prompt,
    load_qa,
    pad_id_of,
    tokenize_qa,
)
from unlearnkit.batching import shard_step
from unlearnkit.checkpoint import (  # noqa: F401  (re-exported: the checkpoint API lived here)
    RESUME_MAY_CHANGE,
    TrainState,
    check_resume_config,
    checkpoint_payload,
    checkpoints,
    load_checkpoint,
    load_trainable,
    save_checkpoint,
    truncate_log,
)
from unlearnkit.errors import RunInterrupted, TrainingDiverged, UserError
from unlearnkit.guard import GUARD_DIR, GuardData, UtilityGuard, announce, prepare_guard
from unlearnkit.methods import METHODS, REFUSALS, Method, Needs, resolve_needs
from unlearnkit.own_answers import answered_by_original
from unlearnkit.modeling import (
    Reference,
    add_lora,
    decoder_layers,
    train_only_mlp_out,
    check_output_dir,
    disable_dropout,
    hold_frozen_in,
    load_model,
    load_tokenizer,
    save_adapter,
    save_merged,
    trainable_state,
)
from unlearnkit.sharding import env_flag, fsdp_launched, fsdp_settings, full, held_bytes, shard
from unlearnkit.optim import build_optimizer, check_optimizer, grad_norm_fp32
from unlearnkit.step import (  # noqa: F401  (compute_terms: the step, re-exported)
    COMPILE_LENGTH_MULTIPLE, StepModule, compile_body, compile_unsupported, compute_terms, set_attention,
)

@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    stop_reason: str
    seconds: float
    last_log: dict[str, Any] = field(default_factory=dict)
    is_main_process: bool = True  # False on the other processes of an `accelerate launch` run (they write nothing)
    guard: dict[str, Any] | None = None  # the utility guard's decision (run_info.json "guard"), when guard_every is on


# ------------------------------------------------------------------------------------------- setup
class RunData(NamedTuple):
    forget: list[QAExample]
    normal: list[QAExample]  # empty when the method needs none
    mismatch_pool: list[QAExample]  # mismatch_pool's rows (their answers are drawn); empty = the normal answers


def load_run_data(config: RunConfig, method: Method) -> RunData:
    """The forget, normal and mismatch-pool examples of the run. With ``normal_answers=self`` the normal
    answers may be empty (prompt-only pools): the model writes them."""
    d, m = config.data, config.method
    needs = resolve_needs(method, m)
    forget = load_qa(d.forget, split=d.forget_split, question_column=d.forget_question_column,
                     answer_column=d.forget_answer_column, limit=d.max_forget, where=d.forget_where,
                     preferred_column=d.forget_preferred_column if needs.preferred == "column" else "")
    needs_normal = needs.normal
    normal = (
        load_qa(d.normal, split=d.normal_split, question_column=d.normal_question_column,
                answer_column=d.normal_answer_column, limit=d.max_normal, where=d.normal_where,
                need_answers=d.normal_answers != "self")
        if needs_normal else []
    )
    if method.mismatch_source == "template" and not m.template_reply.strip():
        raise UserError("template_reply is empty; give the fixed reply the templated method should learn")
    pool = load_qa(d.mismatch_pool.strip()) if d.mismatch_pool.strip() else []
    return RunData(forget, normal, pool)


def prepare_data(config: RunConfig, tokenizer: Any, method: Method, original_model: Any = None,
                 data: RunData | None = None) -> StepBatcher:
    """The step batcher of the run. With ``normal_answers=self`` the normal answers are ``original_model``'s
    own greedy answers to the normal prompts (see unlearnkit.own_answers); the model must then be given."""
    d, m = config.data, config.method
    needs = resolve_needs(method, m)
    forget, normal, pool = data if data is not None else load_run_data(config, method)
    if normal and d.normal_answers == "self":
        if original_model is None:
            raise ValueError("normal_answers=self needs the original model to answer the normal prompts")
        normal = answered_by_original(original_model, tokenizer, normal, config.model, d.template, d.max_length, config.train.progress)
    template_ids = None
    if method.mismatch_source == "template":
        # Tokenized after a real prompt, so the seam is the one every forget prompt has (see data.encode_pair).
        prompt = format_prompt(tokenizer, forget[0].question, d.template)
        template_ids = encode_pair(tokenizer, prompt, format_answer(m.template_reply, d.template, prompt))[1]
    refusal_ids = []
    if needs.preferred == "refusal":
        # Like the template reply: tokenized after a real prompt so the seam matches every forget prompt's.
        prompt = format_prompt(tokenizer, forget[0].question, d.template)
        refusal_ids = [encode_pair(tokenizer, prompt, format_answer(r, d.template, prompt))[1] for r in REFUSALS]
    return StepBatcher(
        tokenize_qa(tokenizer, forget, d.template),
        tokenize_qa(tokenizer, normal, d.template),
        batch_size=config.train.batch_size, num_mismatch=m.num_mismatch, max_length=d.max_length,
        pad_id=pad_id_of(tokenizer), seed=config.train.seed,
        mismatch_source=needs.mismatch, template_reply_ids=template_ids,
        use_normal=needs.kl or needs.retain_nll or needs.hidden_states,
        bos_id=tokenizer.bos_token_id, preferred_source=needs.preferred, refusal_ids=refusal_ids,
        mismatch_pool=[ex.answer_ids for ex in tokenize_qa(tokenizer, pool, d.template)],
    )


def check_output_writable(output_dir: str) -> None:
    """Refuse, before anything loads, an output folder that cannot be written: under a file, or in a
    folder this user may not write (probed by creating and removing a temporary file)."""
    out = Path(output_dir).expanduser()
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"output_dir {output_dir} is under {existing}, which is a file, not a folder; choose another output_dir")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f"output_dir {output_dir} is not writable ({exc.strerror} in {existing}); choose a writable output_dir") from None


def prepare_output_dir(config: RunConfig, resume: bool, create: bool = True) -> Path:
    """Check the output folder (every process) and, with ``create``, make it (the main process)."""
    out = Path(config.train.output_dir).expanduser()
    check_output_dir(str(out), config.model.name)
    saved = out / "config.yaml"
    if resume and saved.is_file():
        check_resume_config(config, saved)
    elif out.exists() and any(out.iterdir()) and not config.train.overwrite and not resume:
        raise UserError(f"output_dir {out} is not empty; pass --resume to continue that run, overwrite=true, or another output_dir")
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


# Write failures of the output folder that the user fixes (space, permissions), not bugs.
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EFBIG}


@contextlib.contextmanager
def output_errors(out: Path) -> Any:
    """Turn a failed write under ``out`` (disk full, read-only, no permission) into one UserError line.
    Writers stage into temporary folders and rename, so what failed leaves nothing partial behind."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            raise
        where = exc.filename or out
        fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "make it writable"
        raise UserError(f"cannot write {where}: {exc.strerror}; {fix} or choose another output_dir, then rerun "
                        "with --resume (the last complete checkpoint is kept)") from None

def model_card(config: RunConfig, result_steps: int, stop_reason: str) -> str:
    m, d = config.method, config.data
    title = "Finetuned (memorization set-up)" if m.name == "finetune" else "Unlearned"
    return (
        f"# {title} with unlearnkit {__version__}\n\n"
        f"Base model: `{config.model.name}`. Method: `{m.name}` ({METHODS[m.name].summary}), "
        f"weights forget={m.w_forget} mismatch={m.w_mismatch} normal={m.w_normal}, K={m.num_mismatch}"
        + (f", template reply {m.template_reply!r}" if METHODS[m.name].mismatch_source == "template" else "")
        + f".\n\nForgotten data: `{d.forget}` (prompt format `{d.template}`); normal data: `{d.normal}`.\n"
        f"Training: {result_steps} steps ({stop_reason}), lr {config.train.lr}, batch {config.train.batch_size}, "
        f"{'LoRA r=' + str(config.model.lora_r) if config.model.lora else 'full finetuning'}, seed {config.train.seed}.\n\n"
        f"Method: {METHODS[m.name].paper}; unlearning set-up after Yao, Xu, Liu (2023), *Large Language Model Unlearning*, arXiv:2310.10683.\n"
        "Unlearning reduces, but does not guarantee the absence of, the forgotten behaviour; evaluate before use.\n"
    )




# ------------------------------------------------------------------------------------------- set-up
@dataclass
class Run:
    """Everything set-up builds and the loop, the stop rules and saving read."""

    config: RunConfig
    method: Method
    tokenizer: Any
    batcher: StepBatcher
    model: torch.nn.Module
    reference: Reference | None
    optimizer: Any
    scheduler: Any
    accelerator: Any
    params: list[torch.nn.Parameter]
    out: Path
    state: TrainState
    log_path: Path
    base_held_in_bf16: bool = False  # LoRA base weights stored in bf16 (merged output rebuilt in float32)
    # What each step computes: the method's needs with the run's regularizer (methods.resolve_needs).
    needs: Needs = field(default_factory=Needs)
    engine: torch.nn.Module | None = None  # the prepared StepModule (DDP-wrapped in a multi-process run, sharded under FSDP)
    sharded: bool = False  # FSDP: parameters are DTensor shards (what is written is gathered first)
    session_seconds: float = 0.0  # training seconds of this invocation (what time_budget_s limits)
    policy_held_in_bf16: bool = False  # full finetuning with precision=bf16: the policy's weights are bf16
    compiled: bool = False  # the decoder body is torch.compiled (rows padded to COMPILE_LENGTH_MULTIPLE)
    guard_data: GuardData | None = None  # the utility guard's prompts and forget probe (guard_every > 0)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def reduce(self, values: list[float], op: str = "mean") -> list[float]:
        """``values`` combined over processes (mean or max); themselves in a one-process run. Every
        decision (stop rules, faults) is taken on reduced values, so all processes take it together."""
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if op == "mean":
            tensor /= self.world
        return tensor.tolist()

    @property
    def hidden_layer(self) -> int | None:
        return hidden_layer_of(self.config.method, self.needs)

    def token_mean(self, count: int) -> float:
        """Mean over processes of a per-process token count (normalises the KL; see compute_terms)."""
        return self.reduce([float(count)])[0]


def _refuse_engine(kind: str) -> None:
    raise UserError(f"accelerate distributed_type {kind} is not supported: use configs/accelerate/fsdp.yaml (sharded) or "
                    "configs/accelerate/ddp.yaml (see docs/scaling.md)")


def hidden_layer_of(config: MethodConfig, needs: Needs) -> int | None:
    """The step engine's hidden-state index (0 = embeddings) for a method reading hidden states (RMU):
    the output of decoder layer ``rmu_layer`` (0-based) is hidden state rmu_layer + 1. None otherwise."""
    return config.rmu_layer + 1 if needs.hidden_states else None


def set_up(config: RunConfig, resume: bool) -> Run:
    """Data, model (+ LoRA, dropout off, attention path), reference, optimizer, and the state to start from.

    In a multi-process run (``accelerate launch``) every process builds the same model and the same
    step batcher; only the main process creates and writes the output folder (the others wait)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    t = config.train
    method = METHODS[config.method.name]
    needs = resolve_needs(method, config.method)
    # Launches unlearnkit cannot run are refused before accelerate starts (one line, not a traceback).
    if env_flag("ACCELERATE_USE_DEEPSPEED"):
        _refuse_engine("DEEPSPEED")
    # FSDP: unlearnkit shards the step itself (unlearnkit.sharding), on GPUs and on CPU (where accelerate's
    # processes stay plain MULTI_CPU ones), so the model is never given to accelerator.prepare.
    fsdp = fsdp_settings() if fsdp_launched() else None
    check_optimizer(t.optimizer, t.precision, sharded=fsdp is not None, lora=config.model.lora)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # auto: on with CUDA, but not under FSDP (compiling around sharded layers is untested).
    compiled = t.compile == "true" or (t.compile == "auto" and device.type == "cuda" and fsdp is None)
    if compiled and compile_unsupported(device):
        if t.compile == "true":
            raise UserError(f"compile=true is not supported here: {compile_unsupported(device)}; set compile=auto or false")
        compiled = False
    accelerator = Accelerator(mixed_precision="bf16" if t.precision == "bf16" else "no", cpu=not torch.cuda.is_available())
    engine_kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if engine_kind in ("DEEPSPEED", "MEGATRON_LM"):
        _refuse_engine(engine_kind)
    if t.batch_size % accelerator.num_processes:
        raise UserError(f"batch_size={t.batch_size} is the global batch and must divide evenly over {accelerator.num_processes} "
                        f"processes; use a multiple of {accelerator.num_processes}")
    # Everything that can fail on bad input happens before the output folder is touched.
    # The data before the tokenizer: a bad dataset name fails in a second, before the builtin model's first-use
    # conversion (and its progress bar) runs.
    data = load_run_data(config, method)  # read once: checked here, batched below
    tokenizer = load_tokenizer(config.model)
    guard_data = prepare_guard(config, data, accelerator.num_processes)  # overlap with an eval set: an error now
    check_output_dir(t.output_dir, config.model.name)
    check_output_writable(t.output_dir)
    prepare_output_dir(config, resume, create=False)
    set_seed(t.seed)
    model = load_model(config.model)
    with accelerator.main_process_first():  # the main process fills the own-answers cache, the others read it
        batcher = prepare_data(config, tokenizer, method, original_model=model, data=data)  # before any update (own answers)
    if needs.hidden_states:
        layers = len(decoder_layers(model)[1])
        if config.method.rmu_layer >= layers:
            raise UserError(f"rmu_layer {config.method.rmu_layer} is past the model's last layer ({layers - 1}); choose a middle layer")
    if config.model.lora:
        model = add_lora(model, config.model)
    if config.method.name == "rmu" and config.method.rmu_params == "mlp_out":
        layer = config.method.rmu_layer
        train_only_mlp_out(model, list(range(max(0, layer - 2), layer + 1)))
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes to it
    out = Path(t.output_dir).expanduser()
    if accelerator.is_main_process:
        with output_errors(out):
            prepare_output_dir(config, resume)  # after every check that can fail on bad input

    # Dropout off in the policy and (being the same module or a copy of it) in the reference: the KL
    # compares them token by token and must be 0 before the first update.
    disable_dropout(model)
    set_attention(model, t.attention)
    reference = None
    frozen_dtype = torch.bfloat16 if t.precision == "bf16" else None
    if needs.reference:
        reference = Reference(model, lora=config.model.lora, dtype=frozen_dtype)
    base_held_in_bf16 = bool(config.model.lora and frozen_dtype is not None and hold_frozen_in(model, frozen_dtype))
    # Full finetuning in bf16: the policy's own weights are bf16 (no float32 weights cast to bf16 on every
    # forward, which made the autocast-only bf16 slower than fp32); float32 masters live in the optimizer
    # (optim.MasterWeightAdamW). Under FSDP the shards stay float32 with bf16 autocast compute.
    policy_held_in_bf16 = bool(not config.model.lora and frozen_dtype is not None and fsdp is None)
    masters = None
    if policy_held_in_bf16:
        if t.optimizer == "adamw":  # the masters start from the float32 weights, not their bf16 rounding
            masters = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        model.to(dtype=frozen_dtype)
    if compiled:
        compile_body(model)
        if reference is not None and reference.frozen is not None:
            compile_body(reference.frozen)
    model.train()
    if fsdp is not None:
        # Sharded first, then the optimizer over the shards (FSDP replaces the parameters by DTensor shards).
        engine = StepModule(model, reference, holds_reference=True)
        shard(engine, [model] + ([reference.frozen] if reference is not None and reference.frozen is not None else []),
              accelerator.device, accelerator.num_processes, fsdp)
        optimizer = build_optimizer([p for p in engine.parameters() if p.requires_grad], t.optimizer, t.lr, t.weight_decay)
    else:
        model.to(accelerator.device)  # before the optimizer: float32 masters / 8-bit state are made beside the weights
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, t.optimizer, t.lr, t.weight_decay, masters)
        del masters  # (the optimizer holds them, on the weights' device)
        # The step module (policy + the step) is what gets prepared: under DDP its forward is the whole packed step.
        engine, optimizer = accelerator.prepare(StepModule(model, reference), optimizer)
        if reference is not None and reference.frozen is not None:
            reference.frozen.to(accelerator.device)
    scheduler = get_linear_schedule_with_warmup(optimizer, t.warmup_steps, t.max_steps)

    state = TrainState()
    log_path = out / "train_log.jsonl"
    found = checkpoints(out) if resume else []
    if found:
        state = load_checkpoint(found[-1], model, optimizer, scheduler)
    accelerator.wait_for_everyone()  # every process has read the checkpoint before the main one trims or clears
    if accelerator.is_main_process:
        with output_errors(out):
            if found:
                truncate_log(log_path, state.step)
            else:
                log_path.write_text("")
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
                shutil.rmtree(out / GUARD_DIR, ignore_errors=True)
            save_config(config, out / "config.yaml")
    accelerator.wait_for_everyone()
    trained = [p for p in engine.parameters() if p.requires_grad]  # the prepared module's own (clipping under DDP/FSDP)
    return Run(config, method, tokenizer, batcher, model, reference, optimizer, scheduler, accelerator, trained, out, state, log_path,
               base_held_in_bf16, needs, engine, sharded=fsdp is not None, policy_held_in_bf16=policy_held_in_bf16,
               compiled=compiled, guard_data=guard_data)


# ------------------------------------------------------------------------------------------- one step
def step_loss(run: Run, step_batch: Any) -> tuple[Any, torch.Tensor]:
    """This process's loss terms of the step and the method's loss (one packed forward, with the graph)."""
    t = run.config.train
    engine = run.engine if run.engine is not None else StepModule(run.model, run.reference)
    with run.accelerator.autocast():
        terms = engine(step_batch, run.needs.step_needs, t.pack_tokens, t.logit_chunk,
                       token_mean=run.token_mean if run.world > 1 else None, hidden_layer=run.hidden_layer,
                       length_multiple=COMPILE_LENGTH_MULTIPLE if run.compiled else 1)
        return terms, run.method.combine(terms, run.config.method)


def sharpness_aware_gradient(run: Run, step_batch: Any, rho: float) -> None:
    """Replace the step's gradient g (already averaged over processes) by the gradient at the weights moved
    ``rho * g / ||g||`` (SAM, Foret et al. 2021), then move the weights back; the optimizer steps from the
    original weights with it. The move raises the step's loss fastest, i.e. toward remembering the forget
    set; an update that still lowers the loss there leaves a minimum whose neighbourhood forgets too, which
    is what a few steps of relearning search (Fan et al. 2025, "Towards LLM Unlearning Resilient to
    Relearning Attacks: A Sharpness-Aware Minimization Perspective"). The reference (a frozen copy, or with
    LoRA the adapter switched off) does not move. A non-finite gradient is left as is for the divergence check."""
    grads = [p.grad for p in run.params if p.grad is not None]
    norm = float(full(torch.nn.utils.get_total_norm(grads)))
    if not math.isfinite(norm) or norm == 0.0:
        return
    shifts: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    with torch.no_grad():
        for param in run.params:
            if param.grad is not None:
                shift = param.grad * (rho / norm)
                param.add_(shift)
                shifts.append((param, shift))
    run.optimizer.zero_grad(set_to_none=True)
    _, loss = step_loss(run, step_batch)
    run.accelerator.backward(loss)
    with torch.no_grad():
        for param, shift in shifts:
            param.sub_(shift)


def train_step(run: Run) -> dict[str, Any]:
    """One optimizer step on this process's share of the batch of step ``run.state.step``; returns its
    log row (loss terms averaged over processes). Raises TrainingDiverged, before any update, when the
    loss or the gradient norm is not finite.

    Host syncs: the logged values (and the non-finite check, which must precede the update) are read
    from the device in ONE transfer, after the backward; on CUDA the clock is read after
    ``torch.cuda.synchronize`` so ``step_time_s`` covers the device's work, not just its launch."""
    t = run.config.train
    cuda = run.accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    step_batch = shard_step(run.batcher(run.state.step), run.accelerator.process_index, run.world)
    terms, loss = step_loss(run, step_batch)
    run.accelerator.backward(loss)
    if t.sam_rho > 0:
        sharpness_aware_gradient(run, step_batch, t.sam_rho)
    # The gradient norm is always taken (max_grad_norm=0: no clipping) so that a non-finite one is caught.
    if any(p.grad is not None and p.grad.dtype != torch.float32 for p in run.params):
        grad_norm = grad_norm_fp32(run.params, t.max_grad_norm)  # bf16 gradients: their norm in float32
    elif t.max_grad_norm > 0:
        grad_norm = run.accelerator.clip_grad_norm_(run.params, t.max_grad_norm)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in run.params if p.grad is not None])
    grad_norm = full(grad_norm) if grad_norm is not None else torch.zeros(())  # FSDP: a DTensor, reduced by full()
    groups = [g for g in ("normal", "preferred") if g in terms.nll_sum]
    present = [terms.forget_nll, terms.mismatch_nll, terms.kl] + [terms.mean_nll(g) for g in groups]
    device = loss.device
    values = torch.stack([x.detach().float().mean().to(device) if x is not None else torch.zeros((), device=device)
                          for x in present] + [loss.detach().float(), grad_norm.detach().float().to(device)])
    read = values.tolist()  # the step's one host sync
    grad_norm = read[-1]
    forget_nll, mismatch_nll, kl, loss_value, tokens = run.reduce(read[:3] + [read[-2], float(step_batch.num_tokens)])
    group_nll = dict(zip(groups, read[3:3 + len(groups)]))
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        run.optimizer.zero_grad(set_to_none=True)
        found = checkpoints(run.out)
        kept = f"the last good checkpoint {found[-1]} is kept" if found else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"step {run.state.step + 1}: the loss is {loss_value} and the gradient norm {grad_norm} (not finite); no update "
            f"was applied and no model written, {kept}; lower lr (now {t.lr}), set max_grad_norm (e.g. 1.0) or use "
            "precision=fp32, then rerun with overwrite=true or a new output_dir"
        )
    lr = float(run.scheduler.get_last_lr()[0])  # (torchao keeps lr as a CPU tensor)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    peak = None
    if cuda:
        torch.cuda.synchronize()  # the clock stops when the device has finished the step, not when it was queued
        peak = torch.cuda.max_memory_allocated() / 2**30
    elapsed = run.reduce([time.perf_counter() - started], op="max")[0]  # the slowest process sets the pace
    run.state.step += 1
    run.state.train_seconds += elapsed
    run.session_seconds += elapsed
    row = {
        "step": run.state.step, "forget_nll": forget_nll, "mismatch_nll": mismatch_nll if terms.mismatch_nll is not None else None,
        "kl": kl if terms.kl is not None else None, "loss": loss_value, "grad_norm": grad_norm, "lr": lr,
        **{f"{'retain' if g == 'normal' else g}_nll": v for g, v in group_nll.items()},
        **terms.logged,  # the method's own loss parts (npo_loss, dpo_loss, rmu_*_mse, ...)
        "tokens_per_s": tokens * run.world / elapsed, "step_time_s": elapsed,
    }
    if peak is not None:
        row["peak_mem_gib"] = run.reduce([peak], op="max")[0]  # the fullest device of the step
    return row


# ------------------------------------------------------------------------------------------- stop rules
def stop_reason(state: TrainState, t: Any, session_seconds: float | None = None) -> str:
    """Why the run stops before its next step ('' = keep going).

    ``time_budget_s`` limits each invocation (``session_seconds``, default the run's total): a run
    that stopped on its budget and is resumed gets a fresh budget and continues; max_steps and the
    threshold rule count over the whole run.
    """
    if state.step >= t.max_steps:
        return "max_steps"
    if state.stop_at is not None and state.step >= state.stop_at:
        return f"forget NLL passed {t.forget_threshold}, then {t.continue_factor}x more steps"
    seconds = state.train_seconds if session_seconds is None else session_seconds
    if t.time_budget_s is not None and seconds >= t.time_budget_s:
        return f"time budget {t.time_budget_s}s"
    return ""


def update_threshold_rule(state: TrainState, t: Any, forget_nll: float) -> None:
    """The paper's rule: once the forget NLL passes the threshold, run continue_factor x the steps so far."""
    if t.forget_threshold is not None and state.stop_at is None and forget_nll > t.forget_threshold:
        state.stop_at = min(t.max_steps, state.step + math.ceil(t.continue_factor * state.step))


# ------------------------------------------------------------------------------------------- saving
def write_checkpoint(run: Run) -> dict[str, torch.Tensor]:
    """The main process writes the checkpoint of the current step; the others wait for it. Under FSDP every
    process first takes part in gathering the state. Returns the (whole) trainable weights written."""
    weights: dict[str, torch.Tensor] = {}
    if run.is_main or run.sharded:
        weights, optimizer_state = checkpoint_payload(run.model, run.optimizer)
    if run.is_main:
        with output_errors(run.out):
            save_checkpoint(run.out, weights, optimizer_state, run.scheduler, run.state, run.config.train.keep_checkpoints)
    run.accelerator.wait_for_everyone()
    return weights


def save_outputs(run: Run, guard: UtilityGuard | None = None) -> dict[str, Any] | None:
    """Final checkpoint, the model (merged and/or adapter) with its card, and run_info.json (main process).
    With the utility guard the model written is the step it chose (returns its decision)."""
    weights = write_checkpoint(run)
    guard_info = None
    if guard is not None:  # one process (prepare_guard refuses more)
        chosen, guard_info = guard.export(weights)
        if chosen is not weights:
            load_trainable(run.model, chosen)  # the policy exports what it holds (see _save_model)
            weights = chosen
    if run.is_main:
        with output_errors(run.out):
            _save_model(run, weights, guard_info)
    run.accelerator.wait_for_everyone()
    return guard_info


def parameter_bytes(run: Run) -> int:
    """Bytes of policy and reference weights the main process holds (its shards under FSDP)."""
    if run.sharded:
        return held_bytes(run.engine.parameters())  # the policy and the reference copy, sharded
    frozen = run.reference.frozen if run.reference is not None else None
    return held_bytes(run.model.parameters()) + (held_bytes(frozen.parameters()) if frozen is not None else 0)


def _save_model(run: Run, weights: dict[str, torch.Tensor], guard_info: dict[str, Any] | None = None) -> None:
    """Write the model; ``weights``: the whole trainable weights (gathered from the shards under FSDP);
    ``guard_info``: the utility guard's decision (its exported step names the model in the card)."""
    t, state = run.config.train, run.state
    held = parameter_bytes(run)  # before saving: the merged export unloads the adapter from the policy in place
    policy = run.model
    policy.eval()
    if run.sharded or run.base_held_in_bf16 or run.policy_held_in_bf16:
        # A plain float32 model rebuilt from the original and the trained weights: under FSDP the policy's
        # parameters are shards; with a LoRA base held in bf16 the adapter is merged into the float32 original;
        # a bf16 policy is exported from its float32 master weights (``weights`` holds them, see checkpoint_payload).
        policy = load_model(run.config.model)
        if run.config.model.lora:
            policy = add_lora(policy, run.config.model)
        load_trainable(policy, weights)
    card = model_card(run.config, state.step, state.stop_reason)
    if guard_info is not None:
        card += (f"\nUtility guard: the weights are those of step {guard_info['exported_step']} of {state.step} "
                 f"({guard_info['rule']}; status {guard_info['status']}).\n")
    if t.save_mode in ("adapter", "both"):
        save_adapter(policy, run.tokenizer, run.out / "adapter", card)
    if t.save_mode in ("merged", "both"):
        save_merged(policy, run.tokenizer, run.out / "model", card)
    info = {"unlearnkit_version": __version__, "seed": t.seed, "steps": state.step, "stop_reason": state.stop_reason,
            "train_seconds": state.train_seconds, "processes": run.world,
            "sharding": "fsdp" if run.sharded else "none", "parameter_bytes_per_process": held, "torch_version": torch.__version__,
            **({"guard": guard_info} if guard_info is not None else {})}
    (run.out / "run_info.json").write_text(json.dumps(info, indent=2))


# ------------------------------------------------------------------------------------------- signals
class StopSignals:
    """While training, SIGTERM and SIGINT (a cluster pre-empting the job, Ctrl-C) only set a flag; the
    loop checkpoints after the step in progress and stops. A second SIGINT interrupts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# ------------------------------------------------------------------------------------------- the loop
def train(
    config: RunConfig,
    *,
    resume: bool = False,
    on_step_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Run unlearning as configured; returns where the outputs are.

    Raises UserError on bad input or an unwritable/full output folder, RunInterrupted after writing a
    checkpoint when SIGTERM/SIGINT arrives, TrainingDiverged on a non-finite loss or gradient norm.
    """
    from tqdm.auto import tqdm

    with StopSignals() as signals:
        run = set_up(config, resume)
        t, state = config.train, run.state
        # The utility guard (unlearnkit.guard): scores the original model before the first update (kept in the checkpoint).
        guard = UtilityGuard(run, run.guard_data) if run.guard_data is not None else None
        bar = tqdm(total=t.max_steps, initial=state.step, desc="unlearning", disable=not t.progress or not run.is_main,
                   dynamic_ncols=True)
        last: dict[str, Any] = {}
        with contextlib.ExitStack() as files:
            files.enter_context(output_errors(run.out))
            log = files.enter_context(run.log_path.open("a")) if run.is_main else None  # the main process writes
            while True:
                received = int(run.reduce([float(signals.received)], op="max")[0])
                if received:
                    if state.step:
                        write_checkpoint(run)
                    bar.close()
                    name = signal.Signals(received).name
                    saved = f"checkpoint step-{state.step} written in {run.out / 'checkpoints'}" if state.step else "no step was done"
                    raise RunInterrupted(f"{name} received: stopped after step {state.step}, {saved}; continue with "
                                         "`unlearnkit run --resume` and the same config", received)
                state.stop_reason = stop_reason(state, t, run.session_seconds) or (guard.stop_reason() if guard else "")
                if state.stop_reason:
                    break
                last = train_step(run)
                update_threshold_rule(state, t, last["forget_nll"])
                if guard is not None and guard.due(state.step, ending=bool(stop_reason(state, t, run.session_seconds))):
                    last.update(guard.check())  # every guard_every steps and at the last one
                if log is not None:
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                bar.update(1)
                bar.set_postfix(forget_nll=f"{last['forget_nll']:.3f}", kl=f"{last['kl'] or 0:.4f}")
                if t.save_every and state.step % t.save_every == 0:
                    write_checkpoint(run)
                if on_step_end is not None:
                    on_step_end(state.step)
        bar.close()
        guard_info = save_outputs(run, guard)
        if guard_info is not None and run.is_main:
            announce(guard_info)
    return TrainResult(run.out, state.step, state.stop_reason, state.train_seconds, last, run.is_main, guard_info)
