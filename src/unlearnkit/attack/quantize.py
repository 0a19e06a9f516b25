"""Weight-only quantization of a model's decoder linear layers, as a deployment would apply it.

The attack needs the numbers a quantized deployment computes, not its memory savings, so the weights
are quantized and dequantized in place (fake quantization): a weight-only int kernel computes
``x @ dequant(W)``, which is what the float model then computes too, at float speed. Measured on the
builtin model (2 CPU cores; docs/attack.md): optimum-quanto's int kernels generate 4-6x slower than
float32, and torchao's int4 path needs an extra CPU kernel package (mslk), so the CPU path is this
round-to-nearest quantizer, written once and tested against a hand case.

Round-to-nearest (RTN), group-wise, asymmetric (min/max per group, as GPTQ's and AWQ's RTN baselines
and optimum-quanto's int4 do): per group of ``group_size`` consecutive input weights of one output row,
with min <= 0 <= max (the range always holds zero, as in GPTQ's quantizer),

    scale = (max - min) / (2^bits - 1),  zero = round(-min / scale),
    q = clamp(round(w / scale) + zero, 0, 2^bits - 1),  w' = (q - zero) * scale.

Which layers: every ``torch.nn.Linear`` except the output head (``lm_head``); embeddings are not
linear layers. Deployments (GPTQ, AWQ, bitsandbytes, llama.cpp's Q4 presets) keep the head and the
embeddings at higher precision, so do we. GPT-2-style ``Conv1D`` layers are not handled (a model
without ``nn.Linear`` layers is refused). On a GPU with bitsandbytes installed, 4-bit uses NF4
(bitsandbytes' quantize_4bit/dequantize_4bit, block 64) instead, the format a QLoRA-style deployment loads.
"""

from __future__ import annotations

from typing import Any

import torch

GROUP_SIZE = 128


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """``weight`` [out, in] quantized to ``bits`` per group of ``group_size`` inputs and dequantized (same shape/dtype).

    The last group of a row is shorter when ``in`` is not a multiple of ``group_size`` (its own min/max).
    Computed in float32 whatever the weight's dtype.
    """
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    rows, cols = weight.shape
    w = weight.detach().float()
    padded = -(-cols // group_size) * group_size
    if padded != cols:
        # Pad with each row's last value: it lies inside the last group's range, so min/max are unchanged.
        w = torch.cat([w, w[:, -1:].expand(rows, padded - cols)], dim=1)
    groups = w.reshape(rows, -1, group_size)
    # The range always holds 0 (as GPTQ's quantizer): zero is then an exact level, and a group of one sign
    # keeps its whole range instead of clipping its largest weights at a clamped zero point.
    low = groups.amin(dim=-1, keepdim=True).clamp(max=0)
    high = groups.amax(dim=-1, keepdim=True).clamp(min=0)
    top = 2**bits - 1
    scale = ((high - low) / top).clamp(min=1e-8)  # a constant group: any scale reproduces it exactly
    zero = torch.round(-low / scale).clamp(0, top)
    q = torch.clamp(torch.round(groups / scale) + zero, 0, top)
    out = ((q - zero) * scale).reshape(rows, padded)[:, :cols]
    return out.to(weight.dtype)


def quantizable_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """The decoder's ``nn.Linear`` layers: every one except the output head (kept in full precision)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head]


def _nf4_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def quantize_model(model: torch.nn.Module, bits: int, backend: str = "auto") -> dict[str, Any]:
    """Quantize-dequantize the decoder's linear weights of ``model`` in place; returns what was done.

    backend: ``rtn`` (group-wise round-to-nearest, any device), ``nf4`` (bitsandbytes NF4, 4-bit on
    CUDA), ``auto`` (nf4 for 4 bits on CUDA when bitsandbytes is installed, else rtn).
    """
    layers = quantizable_linears(model)
    if not layers:
        raise ValueError("the model has no nn.Linear layers outside its output head")
    device = next(model.parameters()).device
    if backend == "auto":
        backend = "nf4" if bits == 4 and _nf4_available(device) else "rtn"
    if backend == "nf4":
        if bits != 4 or not _nf4_available(device):
            raise ValueError("the nf4 backend needs 4 bits, a CUDA model and bitsandbytes installed")
        import bitsandbytes.functional as bnbf

        for _, module in layers:
            packed, state = bnbf.quantize_4bit(module.weight.data, blocksize=64, quant_type="nf4")
            module.weight.data.copy_(bnbf.dequantize_4bit(packed, state).to(module.weight.dtype))
        scheme = "bitsandbytes NF4, block 64"
    elif backend == "rtn":
        for _, module in layers:
            module.weight.data.copy_(fake_quantize(module.weight.data, bits))
        scheme = f"round-to-nearest int{bits}, asymmetric, group {GROUP_SIZE}"
    else:
        raise ValueError(f"unknown quantization backend {backend!r}; use auto, rtn or nf4")
    numel = sum(module.weight.numel() for _, module in layers)
    return {"bits": bits, "backend": backend, "scheme": scheme, "layers": len(layers), "weights": numel,
            "kept_full_precision": "output head (lm_head), embeddings, norms, biases"}
