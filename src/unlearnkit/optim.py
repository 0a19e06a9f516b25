"""The optimizers a run can use (``optimizer=`` x ``precision=``), and gradient clipping in float32.

- ``adamw`` + fp32: torch's fused AdamW over the float32 weights (unchanged since the first engine).
- ``adamw`` + bf16: the policy's weights are held in bf16 (what the forward reads, no per-step cast),
  and the optimizer keeps float32 MASTER weights (MasterWeightAdamW): each step adds the bf16 gradient
  to the float32 master, runs fused AdamW there, and rounds the result into the bf16 weight. Chosen
  over pure bf16 weights because the paper's updates (lr 2e-6) are far below bf16's resolution
  (2^-8 relative): rounded to nearest, a pure-bf16 AdamW step leaves most weights unchanged (measured:
  docs/gpu.md). Bytes per parameter: 2 (bf16 weight) + 2 (bf16 gradient) + 4 (master) + 8 (AdamW) = 16.
- ``adamw_8bit``: torchao's 8-bit AdamW (block-wise quantized moments: 2 bytes of state per parameter).
  With bf16 weights it rounds each update stochastically (unbiased: small updates survive on average),
  which is what lets a full-parameter 7B run keep bf16 weights without float32 masters.
- ``paged_adamw_8bit``: bitsandbytes' paged 8-bit AdamW (its state moves to host memory when the GPU
  runs short). bitsandbytes rounds bf16 weights to nearest, so it is refused with precision=bf16 for full
  finetuning (LoRA adapters stay float32: allowed).

A missing library is one line naming the package to install (exit 2), raised before anything loads.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Iterable

import torch

from unlearnkit.errors import UserError

# optimizer name -> (import name, pip requirement); adamw needs nothing beyond torch.
LIBRARIES = {
    "adamw_8bit": ("torchao", "torchao>=0.18"),
    "paged_adamw_8bit": ("bitsandbytes", "bitsandbytes>=0.50"),
}


def check_optimizer(name: str, precision: str, sharded: bool = False, lora: bool = False) -> None:
    """Refuse, before the model loads, an optimizer this machine or run cannot use (one line each)."""
    if name in LIBRARIES:
        module, requirement = LIBRARIES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"optimizer={name} needs {module} (pip install '{requirement}', or pip install "
                            f"'unlearnkit[gpu]'); or use optimizer=adamw")
        if sharded:
            raise UserError(f"optimizer={name} is not supported under FSDP (its quantized state is not sharded by "
                            "unlearnkit); use optimizer=adamw with FSDP, or run on one process")
    if name == "paged_adamw_8bit" and precision == "bf16" and not lora:  # (LoRA adapters stay float32)
        raise UserError("optimizer=paged_adamw_8bit rounds bf16 weights to nearest, which loses updates as small as the "
                        "paper's lr; use optimizer=adamw_8bit (stochastic rounding) with precision=bf16, precision=fp32 or lora=true")


class MasterWeightAdamW(torch.optim.AdamW):
    """AdamW over float32 master copies of low-precision (bf16) model parameters.

    The optimizer's own parameters are the float32 masters (its state, the scheduler and checkpoints
    see them); the model keeps bf16 weights and gradients. ``step`` moves the gradients into the
    masters in float32, runs (fused) AdamW there, then rounds the masters into the model weights.
    Checkpoints store the masters as the trainable weights (checkpoint.checkpoint_payload), so a
    resumed run continues from the exact float32 weights.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], masters: list[torch.Tensor] | None = None, **kwargs: Any) -> None:
        """``masters``: the float32 weights the bf16 ``params`` were rounded from (default: the bf16 values)."""
        self.model_params = list(params)
        initial = masters if masters is not None else [p.detach() for p in self.model_params]
        masters = [m.to(device=p.device, dtype=torch.float32).clone().requires_grad_(True) for m, p in zip(initial, self.model_params)]
        super().__init__(masters, **kwargs)

    @property
    def masters(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for model_param, master in zip(self.model_params, self.masters):
            master.grad = None if model_param.grad is None else model_param.grad.float()
        loss = super().step(closure)
        for model_param, master in zip(self.model_params, self.masters):
            model_param.copy_(master)  # round to nearest bf16 (the master keeps what rounding drops)
            master.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for p in self.model_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def load_masters(self, weights: list[torch.Tensor]) -> None:
        """Set the float32 masters (a checkpoint's trainable weights, in parameter order) and round them into
        the model. Checkpoints store the masters as the trainable weights, so they are not repeated in
        the optimizer state."""
        for master, saved, model_param in zip(self.masters, weights, self.model_params):
            master.copy_(saved)
            model_param.copy_(master)

    def master_state(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The float32 master weights by parameter name (what the exported model holds)."""
        return {n: m.detach().cpu().contiguous() for n, m in zip(names, self.masters)}


def build_optimizer(params: list[torch.nn.Parameter], name: str, lr: float, weight_decay: float,
                    masters: list[torch.Tensor] | None = None) -> torch.optim.Optimizer:
    """The run's optimizer over ``params`` (the model's trainable parameters); ``masters``: their float32
    values before they were cast to bf16 (adamw keeps them as master weights)."""
    low_precision = any(p.dtype in (torch.bfloat16, torch.float16) for p in params)
    if name == "adamw":
        # Fused AdamW: one kernel over all parameters instead of ~10 elementwise passes (CPU and CUDA).
        if low_precision:
            return MasterWeightAdamW(params, masters, lr=lr, weight_decay=weight_decay, fused=True)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw_8bit":
        from torchao.optim import AdamW8bit

        return AdamW8bit(params, lr=lr, weight_decay=weight_decay, bf16_stochastic_round=low_precision)
    if name == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay)
    raise UserError(f"optimizer={name!r} is not supported; choose adamw, adamw_8bit or paged_adamw_8bit")


def requantize_state(optimizer: Any) -> None:
    """After ``load_state_dict``: torchao's 8-bit moments, checkpointed dequantized, quantized again into
    fresh 8-bit buffers (else a resumed run would hold them as full tensors). Others: unchanged."""
    if not hasattr(optimizer, "_new_buffer"):
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, signed in (("exp_avg", True), ("exp_avg_sq", False), ("max_exp_avg_sq", False)):
                value = state.get(key)
                if isinstance(value, torch.Tensor) and type(value) is torch.Tensor:
                    buffer = optimizer._new_buffer(p, signed)
                    buffer.copy_(value.to(device=p.device))
                    state[key] = buffer


def inner_optimizer(optimizer: Any) -> Any:
    """The optimizer inside accelerate's wrapper (AcceleratedOptimizer)."""
    return getattr(optimizer, "optimizer", optimizer)


def grad_norm_fp32(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global L2 norm of the gradients computed in float32 (bf16 gradients' own norm keeps ~3 digits), and,
    with ``max_norm`` > 0, the gradients scaled in place as torch's clip_grad_norm_ scales them. Stays on
    the device (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
    total = torch.linalg.vector_norm(norms)
    if max_norm > 0:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, coef.to(grads[0].dtype))
    return total
