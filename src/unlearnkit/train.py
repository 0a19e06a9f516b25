"""The unlearning loop on accelerate: set-up, one step, stop rules, checkpoints, resume, saving.

Each step runs ONE packed policy forward/backward over the step's sequences and, when the method
reads the original model, one no-grad reference forward over just the groups it needs (the step
engine: unlearnkit.step). Checkpoints hold the trainable weights, optimizer, scheduler, RNG
state and stop-rule state; the batch of a step is a pure function of (seed, step), so a run resumed from
a checkpoint (even after kill -9) ends with the same weights as an uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

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
from unlearnkit.errors import UserError
from unlearnkit.methods import METHODS, REFUSALS, Method, Needs, resolve_needs
from unlearnkit.own_answers import model_fingerprint, own_answers
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
from unlearnkit.step import compute_terms, set_attention  # noqa: F401  (compute_terms: the step, re-exported)

# Fields that may differ between an interrupted run and its resume without changing its result.
# (attention, pack_tokens, logit_chunk change how the step is computed, not what: only float rounding.)
RESUME_MAY_CHANGE = {"time_budget_s", "progress", "save_every", "keep_checkpoints", "overwrite", "attention", "pack_tokens",
                     "logit_chunk"}


@dataclass
class TrainState:
    """Everything besides tensors that a checkpoint must restore."""

    step: int = 0  # optimizer steps done
    stop_at: int | None = None  # set once the forget-NLL threshold is crossed
    train_seconds: float = 0.0
    stop_reason: str = ""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    stop_reason: str
    seconds: float
    last_log: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- setup
def load_run_data(config: RunConfig, method: Method) -> tuple[list[QAExample], list[QAExample]]:
    """The forget and normal examples of the run (normal empty when the method needs none). With
    ``normal_answers=self`` the normal answers may be empty (prompt-only pools): the model writes them."""
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
    return forget, normal


def prepare_data(config: RunConfig, tokenizer: Any, method: Method, original_model: Any = None) -> StepBatcher:
    """The step batcher of the run. With ``normal_answers=self`` the normal answers are ``original_model``'s
    own greedy answers to the normal prompts (see unlearnkit.own_answers); the model must then be given."""
    d, m = config.data, config.method
    needs = resolve_needs(method, m)
    forget, normal = load_run_data(config, method)
    if normal and d.normal_answers == "self":
        if original_model is None:
            raise ValueError("normal_answers=self needs the original model to answer the normal prompts")
        answers = own_answers(original_model, tokenizer, [e.question for e in normal], fingerprint=model_fingerprint(config.model),
                              template=d.template, max_new_tokens=d.max_length, progress=config.train.progress)
        normal = [QAExample(e.question, a) for e, a in zip(normal, answers) if a.strip()]
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
    )


def prepare_output_dir(config: RunConfig, resume: bool) -> Path:
    out = Path(config.train.output_dir).expanduser()
    check_output_dir(str(out), config.model.name)
    saved = out / "config.yaml"
    if resume and saved.is_file():
        _check_resume_config(config, saved)
    elif out.exists() and any(out.iterdir()) and not config.train.overwrite and not resume:
        raise UserError(f"output_dir {out} is not empty; pass --resume to continue that run, overwrite=true, or another output_dir")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_resume_config(config: RunConfig, saved: Path) -> None:
    before = yaml.safe_load(saved.read_text())
    now = config.to_dict()
    for section, values in now.items():
        for key, value in values.items():
            if key not in RESUME_MAY_CHANGE and section != "eval" and before.get(section, {}).get(key) != value:
                raise UserError(
                    f"--resume with a different {section}.{key} ({before.get(section, {}).get(key)!r} -> {value!r}) "
                    "would not continue the same run; use the original value or a new output_dir"
                )


# ------------------------------------------------------------------------------------------- checkpoints
def _checkpoints(out: Path) -> list[Path]:
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(out: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: TrainState, keep: int) -> Path:
    """Write checkpoints/step-N atomically (temp folder + rename) and prune old ones."""
    from safetensors.torch import save_file

    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    save_file(trainable_state(model), str(staging / "trainable.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
         "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        staging / "optimizer.pt",
    )
    # state.json is written last: a folder without it is never taken as a checkpoint.
    (staging / "state.json").write_text(json.dumps(state.__dict__))
    target = folder / f"step-{state.step}"
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    for old in _checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> TrainState:
    from safetensors.torch import load_file

    load_trainable(model, load_file(str(path / "trainable.safetensors")))
    extra = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng_cpu"])
    if extra.get("rng_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["rng_cuda"])
    return TrainState(**json.loads((path / "state.json").read_text()))


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines past the checkpoint: the resumed run writes them again."""
    if not log_path.is_file():
        return
    kept = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    log_path.write_text("".join(line + "\n" for line in kept))


def _scalar(x: torch.Tensor | None) -> float | None:
    return None if x is None else float(x.detach().float().mean())


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

    @property
    def hidden_layer(self) -> int | None:
        return hidden_layer_of(self.config.method, self.needs)


def hidden_layer_of(config: MethodConfig, needs: Needs) -> int | None:
    """The step engine's hidden-state index (0 = embeddings) for a method reading hidden states (RMU):
    the output of decoder layer ``rmu_layer`` (0-based) is hidden state rmu_layer + 1. None otherwise."""
    return config.rmu_layer + 1 if needs.hidden_states else None


def set_up(config: RunConfig, resume: bool) -> Run:
    """Data, model (+ LoRA, dropout off, attention path), reference, optimizer, and the state to start from."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    t = config.train
    method = METHODS[config.method.name]
    needs = resolve_needs(method, config.method)
    # Everything that can fail on bad input happens before the output folder is touched.
    tokenizer = load_tokenizer(config.model)
    load_run_data(config, method)
    check_output_dir(t.output_dir, config.model.name)
    set_seed(t.seed)
    model = load_model(config.model)
    batcher = prepare_data(config, tokenizer, method, original_model=model)  # before any update (own answers)
    if needs.hidden_states:
        layers = len(decoder_layers(model)[1])
        if config.method.rmu_layer >= layers:
            raise UserError(f"rmu_layer {config.method.rmu_layer} is past the model's last layer ({layers - 1}); choose a middle layer")
    if config.model.lora:
        model = add_lora(model, config.model)
    if config.method.name == "rmu" and config.method.rmu_params == "mlp_out":
        layer = config.method.rmu_layer
        train_only_mlp_out(model, list(range(max(0, layer - 2), layer + 1)))
    out = prepare_output_dir(config, resume)  # after every check that can fail on bad input

    # Dropout off in the policy and (being the same module or a copy of it) in the reference: the KL
    # compares them token by token and must be 0 before the first update.
    disable_dropout(model)
    set_attention(model, t.attention)
    reference = None
    frozen_dtype = torch.bfloat16 if t.precision == "bf16" else None
    if needs.reference:
        reference = Reference(model, lora=config.model.lora, dtype=frozen_dtype)
    base_held_in_bf16 = bool(config.model.lora and frozen_dtype is not None and hold_frozen_in(model, frozen_dtype))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused AdamW: one kernel over all parameters instead of ~10 elementwise passes (CPU and CUDA).
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, t.warmup_steps, t.max_steps)
    accelerator = Accelerator(mixed_precision="bf16" if t.precision == "bf16" else "no", cpu=not torch.cuda.is_available())
    model, optimizer = accelerator.prepare(model, optimizer)
    if reference is not None and reference.frozen is not None:
        reference.frozen.to(accelerator.device)

    state = TrainState()
    log_path = out / "train_log.jsonl"
    checkpoints = _checkpoints(out) if resume else []
    if checkpoints:
        state = load_checkpoint(checkpoints[-1], accelerator.unwrap_model(model), optimizer, scheduler)
        _truncate_log(log_path, state.step)
    else:
        log_path.write_text("")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    save_config(config, out / "config.yaml")
    return Run(config, method, tokenizer, batcher, model, reference, optimizer, scheduler, accelerator, params, out, state, log_path,
               base_held_in_bf16, needs)


# ------------------------------------------------------------------------------------------- one step
def train_step(run: Run) -> dict[str, Any]:
    """One optimizer step on the batch of step ``run.state.step``; returns its log row."""
    t = run.config.train
    started = time.perf_counter()
    step_batch = run.batcher(run.state.step)
    with run.accelerator.autocast():
        terms = compute_terms(run.model, run.reference, step_batch, run.needs.step_needs,
                              row_tokens=t.pack_tokens, chunk_tokens=t.logit_chunk, hidden_layer=run.hidden_layer)
        loss = run.method.combine(terms, run.config.method)
    run.accelerator.backward(loss)
    if t.max_grad_norm > 0:
        run.accelerator.clip_grad_norm_(run.params, t.max_grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - started
    run.state.step += 1
    run.state.train_seconds += elapsed
    return {
        "step": run.state.step, "forget_nll": _scalar(terms.forget_nll), "mismatch_nll": _scalar(terms.mismatch_nll),
        "kl": _scalar(terms.kl), "loss": float(loss.detach()), "lr": lr,
        **{f"{'retain' if g == 'normal' else g}_nll": _scalar(terms.mean_nll(g)) for g in ("normal", "preferred") if g in terms.nll_sum},
        **terms.logged,  # the method's own loss parts (npo_loss, dpo_loss, rmu_*_mse, ...)
        "tokens_per_s": step_batch.num_tokens / elapsed, "step_time_s": elapsed,
    }


# ------------------------------------------------------------------------------------------- stop rules
def stop_reason(state: TrainState, t: Any) -> str:
    """Why the run stops before its next step ('' = keep going)."""
    if state.step >= t.max_steps:
        return "max_steps"
    if state.stop_at is not None and state.step >= state.stop_at:
        return f"forget NLL passed {t.forget_threshold}, then {t.continue_factor}x more steps"
    if t.time_budget_s is not None and state.train_seconds >= t.time_budget_s:
        return f"time budget {t.time_budget_s}s"
    return ""


def update_threshold_rule(state: TrainState, t: Any, forget_nll: float) -> None:
    """The paper's rule: once the forget NLL passes the threshold, run continue_factor x the steps so far."""
    if t.forget_threshold is not None and state.stop_at is None and forget_nll > t.forget_threshold:
        state.stop_at = min(t.max_steps, state.step + math.ceil(t.continue_factor * state.step))


# ------------------------------------------------------------------------------------------- saving
def save_outputs(run: Run) -> None:
    """Final checkpoint, the model (merged and/or adapter) with its card, and run_info.json."""
    t, state = run.config.train, run.state
    policy = run.accelerator.unwrap_model(run.model)
    save_checkpoint(run.out, policy, run.optimizer, run.scheduler, state, t.keep_checkpoints)
    policy.eval()
    card = model_card(run.config, state.step, state.stop_reason)
    if t.save_mode in ("adapter", "both"):
        save_adapter(policy, run.tokenizer, run.out / "adapter", card)
    if t.save_mode in ("merged", "both"):
        if run.base_held_in_bf16:
            # The base was held in bf16 for training only: merge the adapter into the float32 original.
            policy = add_lora(load_model(run.config.model), run.config.model)
            load_trainable(policy, trainable_state(run.accelerator.unwrap_model(run.model)))
        save_merged(policy, run.tokenizer, run.out / "model", card)
    info = {"unlearnkit_version": __version__, "seed": t.seed, "steps": state.step, "stop_reason": state.stop_reason,
            "train_seconds": state.train_seconds, "torch_version": torch.__version__}
    (run.out / "run_info.json").write_text(json.dumps(info, indent=2))


# ------------------------------------------------------------------------------------------- the loop
def train(
    config: RunConfig,
    *,
    resume: bool = False,
    on_step_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Run unlearning as configured; returns where the outputs are. Raises UserError on bad input."""
    from tqdm.auto import tqdm

    run = set_up(config, resume)
    t, state = config.train, run.state
    bar = tqdm(total=t.max_steps, initial=state.step, desc="unlearning", disable=not t.progress, dynamic_ncols=True)
    last: dict[str, Any] = {}
    with run.log_path.open("a") as log:
        while True:
            state.stop_reason = stop_reason(state, t)
            if state.stop_reason:
                break
            last = train_step(run)
            update_threshold_rule(state, t, last["forget_nll"])
            log.write(json.dumps(last) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(forget_nll=f"{last['forget_nll']:.3f}", kl=f"{last['kl'] or 0:.4f}")
            if t.save_every and state.step % t.save_every == 0:
                save_checkpoint(run.out, run.accelerator.unwrap_model(run.model), run.optimizer, run.scheduler, state, t.keep_checkpoints)
            if on_step_end is not None:
                on_step_end(state.step)
    bar.close()
    save_outputs(run)
    return TrainResult(run.out, state.step, state.stop_reason, state.train_seconds, last)
