"""Atomic checkpoints and resume: what a run needs to continue exactly where it stopped.

A checkpoint is a folder ``checkpoints/step-N`` holding
- ``trainable.safetensors``: the trainable weights (full weights, or the LoRA adapter);
- ``optimizer.safetensors``: every tensor of the optimizer state and the CPU (and CUDA) RNG state;
- ``optimizer.json``: the rest of the optimizer and scheduler state (numbers, lists, flags);
- ``state.json``: the loop's state (step, stop rule, seconds), written last: a folder without it is
  never taken as a checkpoint.
Nothing is unpickled on load: tensors come from safetensors, the rest from JSON, so a checkpoint
from elsewhere cannot run code. (Older checkpoints' ``optimizer.pt`` is read with
``torch.load(weights_only=True)``.) Folders are written to a temporary name and renamed, so a run
killed while saving leaves the previous checkpoint intact. Under FSDP the tensors are gathered whole
before writing and sharded again on load, so every checkpoint has the one-process format.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from unlearnkit.config import RunConfig
from unlearnkit.errors import UserError
from unlearnkit.modeling import trainable_state
from unlearnkit.optim import requantize_state
from unlearnkit.sharding import full, full_state, is_sharded, like, sharded_optimizer_state

# Fields that may differ between an interrupted run and its resume without changing its result.
# (attention, pack_tokens, logit_chunk change how the step is computed, not what: only float rounding.)
RESUME_MAY_CHANGE = {"time_budget_s", "progress", "save_every", "keep_checkpoints", "overwrite", "attention", "pack_tokens",
                     "logit_chunk", "compile"}


@dataclass
class TrainState:
    """Everything besides tensors that a checkpoint must restore."""

    step: int = 0  # optimizer steps done
    stop_at: int | None = None  # set once the forget-NLL threshold is crossed
    train_seconds: float = 0.0  # over every invocation (time_budget_s counts per invocation, see train.stop_reason)
    stop_reason: str = ""
    guard: dict | None = None  # the utility guard's state (unlearnkit.guard): original answers, checks, stopped


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy whole ``weights`` into ``model``'s parameters (into this process's shard of a sharded one)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(like(tensor, params[name]))


def gathered_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, whole: under FSDP each is gathered (a collective: every process calls this)."""
    if not any(is_sharded(p) for p in model.parameters()):
        return trainable_state(model)
    return {n: full(p.detach()).cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------- state split
def _split(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """``value`` with every tensor moved to ``tensors[path]`` and replaced by {"__tensor__": path};
    tuples are kept as {"__tuple__": [...]} (AdamW's betas) so JSON gives back what went in."""
    if isinstance(value, torch.Tensor):
        if type(value) is not torch.Tensor and hasattr(value, "dequantize") and not is_sharded(value):
            # A quantized optimizer state (torchao's 8-bit AdamW moments): stored dequantized, quantized
            # again on load (optim.requantize_state); safetensors holds plain tensors only.
            value = value.dequantize()
        tensor = value.detach().cpu().contiguous()
        if tensor.numel() and any(tensor.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()):
            tensor = tensor.clone()  # one tensor in several places (bitsandbytes' shared quantization maps): safetensors refuses shared memory
        tensors[path] = tensor
        return {"__tensor__": path}
    if isinstance(value, dict):
        return {"__dict__": [[_split(k, tensors, f"{path}.k{i}"), _split(v, tensors, f"{path}.{i}")]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint state holds a {type(value).__name__} at {path}; only tensors, numbers, text, lists and dicts are stored")


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_join(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_join(k, tensors): _join(v, tensors) for k, v in value["__dict__"]}
    return value


def checkpoint_payload(model: torch.nn.Module, optimizer: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trainable weights and optimizer state a checkpoint holds, whole, as a one-process run has them
    (sharded tensors gathered: a collective under FSDP, so every process calls this, the main one writes)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # inside accelerate's wrapper
    if hasattr(inner, "master_state"):
        # bf16 weights with float32 masters (optim.MasterWeightAdamW): the masters are the exact weights.
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        return inner.master_state(names), full_state(optimizer.state_dict())
    return gathered_trainable(model), full_state(optimizer.state_dict())


def save_checkpoint(out: Path, weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any], scheduler: Any,
                    state: TrainState, keep: int) -> Path:
    """Write checkpoints/step-N (``weights`` and ``optimizer_state`` from checkpoint_payload) atomically
    (temp folder + rename) and prune old ones."""
    from safetensors.torch import save_file

    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        save_file(weights, str(staging / "trainable.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        rest = {
            "optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        skeleton = _split(rest, tensors, "s")
        save_file(tensors, str(staging / "optimizer.safetensors"))
        (staging / "optimizer.json").write_text(json.dumps(skeleton))
        # state.json is written last: a folder without it is never taken as a checkpoint.
        (staging / "state.json").write_text(json.dumps(state.__dict__))
        target = folder / f"step-{state.step}"
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing partial: the previous checkpoints stay as they were
        raise
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> TrainState:
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    load_trainable(model, weights)  # (bf16 weights: rounded from the saved float32 masters)
    if (path / "optimizer.json").is_file():
        extra = _join(json.loads((path / "optimizer.json").read_text()), load_file(str(path / "optimizer.safetensors")))
    else:  # checkpoints written before 0.x: a torch file, read without unpickling code
        extra = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(sharded_optimizer_state(extra["optimizer"], optimizer))
    inner = getattr(optimizer, "optimizer", optimizer)
    requantize_state(inner)
    if hasattr(inner, "load_masters"):
        inner.load_masters([weights[n] for n, p in model.named_parameters() if p.requires_grad])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng_cpu"])
    if extra.get("rng_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(extra["rng_cuda"]))
    return TrainState(**json.loads((path / "state.json").read_text()))


def truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines past the checkpoint: the resumed run writes them again."""
    if not log_path.is_file():
        return
    kept = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    log_path.write_text("".join(line + "\n" for line in kept))


def check_resume_config(config: RunConfig, saved: Path) -> None:
    """Refuse a resume whose config would not continue the same run."""
    before = yaml.safe_load(saved.read_text())
    now = config.to_dict()
    for section, values in now.items():
        for key, value in values.items():
            if key not in RESUME_MAY_CHANGE and section != "eval" and before.get(section, {}).get(key) != value:
                raise UserError(
                    f"--resume with a different {section}.{key} ({before.get(section, {}).get(key)!r} -> {value!r}) "
                    "would not continue the same run; use the original value or a new output_dir"
                )
