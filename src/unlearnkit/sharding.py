"""FSDP runs (``accelerate launch --config_file configs/accelerate/fsdp.yaml``): sharding the step and
gathering what is written.

unlearnkit shards with torch's FSDP2 (``torch.distributed.fsdp.fully_shard``) itself instead of through
``accelerator.prepare``: accelerate only turns FSDP on for GPU processes (on CPU its processes are plain
MULTI_CPU), so doing it here runs the SAME sharding code on a CPU test machine (gloo) as on GPUs (NCCL).
The launcher's FSDP settings (``FSDP_*`` variables written from the config file) are read here.

Layout: one FSDP unit per decoder layer (of the policy and, for full finetuning, of the frozen reference
copy) and the step module (``step.StepModule``) as the root unit holding the rest (embeddings, final norm,
LM head). The root's forward is the whole packed step, so its weights are gathered once per step; every
decoder layer is gathered just before it runs and freed after (``reshard_after_forward``).

Parameters become DTensors holding this process's shard. What is written (checkpoints, the exported
model) is gathered first by every process (``full_tensor`` is a collective) and written by the main one,
in the same format as a one-process run: a checkpoint resumes under any process count or engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from unlearnkit.errors import UserError
from unlearnkit.modeling import decoder_layers


def env_flag(name: str, default: str = "false") -> bool:
    """A true/false setting the accelerate launcher passes as an environment variable ("1", "true", "yes")."""
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


def fsdp_launched() -> bool:
    """Whether ``accelerate launch`` started this process with an FSDP config (distributed_type: FSDP)."""
    return env_flag("ACCELERATE_USE_FSDP")


@dataclass(frozen=True)
class FSDPSettings:
    """The launcher's FSDP settings that unlearnkit honours."""

    reshard_after_forward: bool = True  # free each decoder layer's gathered weights after its forward
    offload_params: bool = False  # shards (and their optimizer state) in host memory; GPUs only (untested)


def fsdp_settings() -> FSDPSettings:
    """Read and check the FSDP settings of the launch; refuse the ones unlearnkit cannot honour (one line each)."""
    version = os.environ.get("FSDP_VERSION", "1").strip()
    if version != "2":
        raise UserError(f"fsdp_version {version} is not supported: unlearnkit shards with FSDP2; set fsdp_version: 2 "
                        "in the accelerate config (see configs/accelerate/fsdp.yaml)")
    if env_flag("FSDP_CPU_RAM_EFFICIENT_LOADING"):
        raise UserError("fsdp_cpu_ram_efficient_loading: true is not supported (every process loads the model, then it is "
                        "sharded); set fsdp_cpu_ram_efficient_loading: false in the accelerate config")
    if env_flag("FSDP_ACTIVATION_CHECKPOINTING"):
        raise UserError("fsdp_activation_checkpointing: true is not supported; set it to false and use the run setting "
                        "gradient_checkpointing=true instead")
    return FSDPSettings(reshard_after_forward=env_flag("FSDP_RESHARD_AFTER_FORWARD", "true"), offload_params=env_flag("FSDP_OFFLOAD_PARAMS"))


def shard(engine: torch.nn.Module, models: list[torch.nn.Module], device: torch.device, world: int,
          settings: FSDPSettings) -> None:
    """Shard ``engine`` (the step module) in place over ``world`` processes: each decoder layer of each of
    ``models`` one unit, ``engine`` the root unit. Parameters move to ``device`` as DTensor shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    _terms_as_pytree()
    mesh = init_device_mesh(device.type, (world,))
    offload = CPUOffloadPolicy() if settings.offload_params else OffloadPolicy()
    for model in models:
        for layer in decoder_layers(model)[1]:
            fully_shard(layer, mesh=mesh, reshard_after_forward=settings.reshard_after_forward, offload_policy=offload)
    # The root keeps its weights gathered from forward to the end of backward (the LM head runs again when
    # the chunked losses are recomputed in backward).
    fully_shard(engine, mesh=mesh, reshard_after_forward=False, offload_policy=offload)


def _terms_as_pytree() -> None:
    """Let FSDP see the tensors inside the step's result (a StepTerms): the root unit hooks its backward
    (gradient reduce-scatter of the root's weights) on the forward's output tensors, found by pytree."""
    import torch.utils._pytree as pytree

    from unlearnkit.methods import StepTerms

    if StepTerms not in pytree.SUPPORTED_NODES:
        pytree.register_dataclass(StepTerms)


# ------------------------------------------------------------------------------------------- full <-> shard
def is_sharded(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every process when sharded (a collective: every process calls it)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def held_bytes(params: Any) -> int:
    """Bytes of ``params`` this process holds (its shards of sharded ones)."""
    return sum((p.to_local() if is_sharded(p) else p).numel() * p.element_size() for p in params)


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out like ``param``: this process's shard of it when ``param`` is sharded (no
    communication: every process holds the full value), else ``value`` itself."""
    if not is_sharded(param):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(device=param.device, dtype=param.dtype), param.device_mesh, param.placements,
                             src_data_rank=None)


def full_state(value: Any) -> Any:
    """``value`` (an optimizer state dict, nested dicts/lists) with every sharded tensor gathered, on CPU."""
    if isinstance(value, torch.Tensor):
        return full(value.detach()).cpu() if is_sharded(value) else value
    if isinstance(value, dict):
        return {k: full_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [full_state(v) for v in value]
    return value


def sharded_optimizer_state(state_dict: dict[str, Any], optimizer: Any) -> dict[str, Any]:
    """A full optimizer state dict (as a one-process run writes it) laid out like ``optimizer``'s
    parameters: each per-parameter tensor of a parameter's shape becomes this process's shard."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    by_id = dict(zip(ids, params))
    state = {}
    for key, values in state_dict["state"].items():
        param = by_id[key]
        state[key] = {name: like(v, param) if isinstance(v, torch.Tensor) and is_sharded(param) and v.shape == param.shape else v
                      for name, v in values.items()}
    return {**state_dict, "state": state}
