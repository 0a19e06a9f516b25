"""The multi-GPU memory plan of docs/scaling.md, computed on paper (no GPU measured).

The bytes per parameter come from the package's plan (``unlearnkit.plan``, also behind
``unlearnkit plan --config FILE --gpu-memory 80`` for one run on one GPU): policy weights, reference,
gradients and optimizer state, for full finetuning / LoRA x one process or DDP / FSDP x precision x
optimizer, and the smallest setup whose state fits in 85% of each GPU's memory (the rest left to
activations, the packed step's logit chunks, the weights FSDP holds gathered while it computes, and
allocator slack; activations are NOT counted here: `unlearnkit plan` estimates them for a config).

Engine layouts (see unlearnkit.optim): precision=bf16 on one process or DDP holds the policy in bf16
with float32 master weights in AdamW (2 + 2 + 12 bytes) or, with optimizer=adamw_8bit, bf16 weights
updated with stochastic rounding and 8-bit moments (2 + 2 + 2); under FSDP the shards stay float32
with bf16 compute (4 + 4 + 8) and the 8-bit optimizers are refused. DeepSpeed ZeRO-3 would hold the
FSDP state on paper but is not supported.

    python benchmarks/memory_plan.py    # prints the markdown tables
"""

from __future__ import annotations

from unlearnkit.plan import USABLE, bytes_per_parameter

# name: (parameters, [(in, out) of each linear layer LoRA all-linear adapts, per decoder layer], layers)
MODELS = {
    "OPT-1.3B": (1.316e9, [(2048, 2048)] * 4 + [(2048, 8192), (8192, 2048)], 24),
    "Llama-2-7B": (6.738e9, [(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)], 32),
    "Llama-2-70B": (68.98e9, [(8192, 8192), (8192, 1024), (8192, 1024), (8192, 8192)] + [(8192, 28672)] * 2 + [(28672, 8192)], 80),
}
LORA_R = 8
GPUS = [(24, "24 GB"), (40, "40 GB"), (80, "80 GB")]
COUNTS = [1, 2, 4, 8, 16, 32, 64]
OPTIMIZERS = {"adamw": "adamw", "8bit": "adamw_8bit"}


def lora_fraction(params: float, linears: list[tuple[int, int]], layers: int) -> float:
    return layers * sum(LORA_R * (i + o) for i, o in linears) / params


def per_gpu_bytes(mode: str, sharding: str, precision: str, n: int, lora_frac: float, reference_sharded: bool,
                  optimizer: str = "adamw") -> dict[str, float]:
    """Bytes per model parameter on one GPU, by part."""
    shard = 1.0 if sharding == "DDP" else 1.0 / n
    if mode == "full":
        if sharding == "FSDP":
            # FSDP shards stay float32 (bf16 = autocast compute); the reference copy is bf16 with precision=bf16.
            per = {"policy": 4.0, "reference": 2.0 if precision == "bf16" else 4.0, "gradients": 4.0, "optimizer": 8.0}
        else:
            per = bytes_per_parameter("full", precision, optimizer)
        ref_shard = shard if reference_sharded else 1.0
        return {"policy": per["policy"] * shard, "reference": per["reference"] * ref_shard,
                "grads": per["gradients"] * shard, "optimizer": per["optimizer"] * shard}
    # LoRA: the frozen base (fp32, or bf16 with precision=bf16) is also the reference (adapter disabled):
    # no second copy. Adapter weights and grads are fp32; its optimizer state 8 (AdamW) or 2 (8-bit) bytes.
    base = 2.0 if precision == "bf16" else 4.0
    optim = bytes_per_parameter("lora", precision, optimizer)["optimizer"]
    return {"policy": base * shard + 4 * lora_frac * shard, "reference": 0.0, "grads": 4 * lora_frac * shard,
            "optimizer": optim * lora_frac * shard}


def state_gb(params: float, mode: str, sharding: str, precision: str, n: int, lora_frac: float, reference_sharded: bool,
             optimizer: str = "adamw") -> float:
    return sum(per_gpu_bytes(mode, sharding, precision, n, lora_frac, reference_sharded, optimizer).values()) * params / 1e9


def ddp_fit(params: float, mode: str, precision: str, lora_frac: float, optimizer: str = "adamw") -> str:
    """The smallest single GPU holding a whole replica (DDP replicates: more GPUs never lower it)."""
    need = state_gb(params, mode, "DDP", precision, 1, lora_frac, False, optimizer)
    for size, label in GPUS:
        if need <= USABLE * size:
            return f"{need:.0f} GB: 1 x {label}"
    return f"{need:.0f} GB: no single GPU"


def sharded_fit(params: float, mode: str, precision: str, lora_frac: float, reference_sharded: bool) -> str:
    """Fewest GPUs of each size (80 / 40 / 24 GB) whose sharded state fits."""
    cells = []
    for size, label in reversed(GPUS):
        fits = [n for n in COUNTS if state_gb(params, mode, "FSDP", precision, n, lora_frac, reference_sharded) <= USABLE * size]
        cells.append(f"{fits[0]}x{size}" if fits else f"-x{size}")
    return " / ".join(cells)


def main() -> None:
    print("Bytes per parameter on each GPU (N = GPUs sharding the state; adapter share for LoRA all-linear r=8 on Llama-2-7B):\n")
    print("| mode | precision | optimizer | sharding | policy | reference | gradients | optimizer state | total |")
    print("|---|---|---|---|---|---|---|---|---|")
    frac7 = lora_fraction(*MODELS["Llama-2-7B"])
    for mode in ("full", "lora"):
        for precision in ("fp32", "bf16"):
            for label, optimizer in OPTIMIZERS.items():
                for sharding in ("DDP", "FSDP") if optimizer == "adamw" else ("DDP",):
                    if sharding == "DDP":
                        parts = per_gpu_bytes(mode, sharding, precision, 1, frac7, False, optimizer)
                        cells = [f"{parts[k]:.3g}" for k in ("policy", "reference", "grads", "optimizer")]
                        total = f"{sum(parts.values()):.3g}"
                    else:
                        sym = per_gpu_bytes(mode, "FSDP", precision, 1, frac7, True)
                        cells = [f"{sym[k]:.3g}/N" if sym[k] else "0" for k in ("policy", "reference", "grads", "optimizer")]
                        total = f"{sum(sym.values()):.3g}/N"
                    print(f"| {mode} | {precision} | {label} | {sharding} | " + " | ".join(cells) + f" | {total} |")
    print("\nSmallest GPU setup whose model state fits in 85% of each GPU (activations not counted; "
          "NxS = N GPUs of S GB, -xS = not within 64 GPUs; 8-bit optimizers are not supported under FSDP):\n")
    print("| model | mode | precision | optimizer | one GPU / DDP: state per GPU | FSDP (80 / 40 / 24 GB GPUs) |")
    print("|---|---|---|---|---|---|")
    for name, (params, linears, layers) in MODELS.items():
        frac = lora_fraction(params, linears, layers)
        for mode in ("full", "lora"):
            for precision in ("fp32", "bf16"):
                for label, optimizer in OPTIMIZERS.items():
                    sharded = sharded_fit(params, mode, precision, frac, True) if optimizer == "adamw" else "-"
                    row = [ddp_fit(params, mode, precision, frac, optimizer), sharded]
                    print(f"| {name} | {mode} | {precision} | {label} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
