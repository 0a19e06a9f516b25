"""The multi-GPU memory plan of docs/scaling.md, computed on paper (no GPU measured).

Bytes per parameter of the model state each GPU holds: policy weights, reference, gradients and
AdamW state, for full finetuning / LoRA x DDP / FSDP x precision, and the smallest setup
whose state fits in 85% of each GPU's memory (the rest left to activations, the packed step's
logit chunks, the weights FSDP holds gathered while it computes, and allocator slack; activations are
small at the paper's batch 2 but are NOT counted). Under FSDP unlearnkit shards the full-finetuning
reference copy too. DeepSpeed ZeRO-3 would hold the same state on paper but is not supported.

    python benchmarks/memory_plan.py    # prints the markdown tables
"""

from __future__ import annotations

# name: (parameters, [(in, out) of each linear layer LoRA all-linear adapts, per decoder layer], layers)
MODELS = {
    "OPT-1.3B": (1.316e9, [(2048, 2048)] * 4 + [(2048, 8192), (8192, 2048)], 24),
    "Llama-2-7B": (6.738e9, [(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)], 32),
    "Llama-2-70B": (68.98e9, [(8192, 8192), (8192, 1024), (8192, 1024), (8192, 8192)] + [(8192, 28672)] * 2 + [(28672, 8192)], 80),
}
LORA_R = 8
GPUS = [(24, "24 GB"), (40, "40 GB"), (80, "80 GB")]
COUNTS = [1, 2, 4, 8, 16, 32, 64]
USABLE = 0.85


def lora_fraction(params: float, linears: list[tuple[int, int]], layers: int) -> float:
    return layers * sum(LORA_R * (i + o) for i, o in linears) / params


def per_gpu_bytes(mode: str, sharding: str, precision: str, n: int, lora_frac: float, reference_sharded: bool) -> dict[str, float]:
    """Bytes per model parameter on one GPU, by part."""
    shard = 1.0 if sharding == "DDP" else 1.0 / n
    if mode == "full":
        # unlearnkit keeps trainable weights in fp32 (bf16 = autocast compute); the reference copy is
        # fp32, or bf16 with precision=bf16; grads fp32; AdamW m and v fp32.
        policy, grads, optim = 4.0, 4.0, 8.0
        reference = 2.0 if precision == "bf16" else 4.0
        ref_shard = shard if reference_sharded else 1.0
        return {"policy": policy * shard, "reference": reference * ref_shard, "grads": grads * shard, "optimizer": optim * shard}
    # LoRA: the frozen base (fp32, or bf16 with precision=bf16) is also the reference (adapter disabled):
    # no second copy. Adapter weights, grads and AdamW state are fp32.
    base = 2.0 if precision == "bf16" else 4.0
    return {"policy": base * shard + 4 * lora_frac * shard, "reference": 0.0, "grads": 4 * lora_frac * shard,
            "optimizer": 8 * lora_frac * shard}


def state_gb(params: float, mode: str, sharding: str, precision: str, n: int, lora_frac: float, reference_sharded: bool) -> float:
    return sum(per_gpu_bytes(mode, sharding, precision, n, lora_frac, reference_sharded).values()) * params / 1e9


def ddp_fit(params: float, mode: str, precision: str, lora_frac: float) -> str:
    """The smallest single GPU holding a whole replica (DDP replicates: more GPUs never lower it)."""
    need = state_gb(params, mode, "DDP", precision, 1, lora_frac, False)
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
    print("| mode | precision | sharding | policy | reference | gradients | AdamW | total |")
    print("|---|---|---|---|---|---|---|---|")
    frac7 = lora_fraction(*MODELS["Llama-2-7B"])
    for mode in ("full", "lora"):
        for precision in ("fp32", "bf16"):
            for sharding in ("DDP", "FSDP"):
                if sharding == "DDP":
                    parts = per_gpu_bytes(mode, sharding, precision, 1, frac7, False)
                    cells = [f"{parts[k]:.3g}" for k in ("policy", "reference", "grads", "optimizer")]
                    total = f"{sum(parts.values()):.3g}"
                else:
                    sym = per_gpu_bytes(mode, "FSDP", precision, 1, frac7, True)
                    cells = [f"{sym[k]:.3g}/N" if sym[k] else "0" for k in ("policy", "reference", "grads", "optimizer")]
                    total = f"{sum(sym.values()):.3g}/N"
                print(f"| {mode} | {precision} | {sharding} | " + " | ".join(cells) + f" | {total} |")
    print("\nSmallest GPU setup whose model state fits in 85% of each GPU (activations not counted; "
          "NxS = N GPUs of S GB, -xS = not within 64 GPUs):\n")
    print("| model | mode | precision | DDP: state per GPU | FSDP (80 / 40 / 24 GB GPUs) |")
    print("|---|---|---|---|---|")
    for name, (params, linears, layers) in MODELS.items():
        frac = lora_fraction(params, linears, layers)
        for mode in ("full", "lora"):
            for precision in ("fp32", "bf16"):
                row = [ddp_fit(params, mode, precision, frac), sharded_fit(params, mode, precision, frac, True)]
                print(f"| {name} | {mode} | {precision} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
