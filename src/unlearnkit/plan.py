"""Memory plan of a run on one GPU, on paper: ``unlearnkit plan --config FILE [key=value ...] --gpu-memory 80``.

The model is built on the meta device from its config (no weights are loaded or allocated), so a 7B or
70B plan takes about a second. Well-known architectures the paper presets name (OPT, Llama-2) are
built from their published sizes without any download (ARCHITECTURES); other names read the config of
a local folder or builtin model (a hub name needs the network).

Bytes per parameter follow what the engine holds (train.set_up, optim.py):

| run | policy | reference | gradients | optimizer |
|---|---|---|---|---|
| full fp32, adamw | 4 | 4 | 4 | 8 (m, v) |
| full bf16, adamw | 2 | 2 | 2 | 12 (float32 master + m, v) |
| full, adamw_8bit / paged_adamw_8bit | 4 or 2 | 4 or 2 | 4 or 2 | ~2 (8-bit m, v + block scales) |
| LoRA | base 4 or 2 (bf16), adapter 4 | 0 (adapter disabled) | 4 x adapter | 8 or 2 x adapter |

The reference is counted only when the method reads it (KL, NPO, ...). Activations are an ESTIMATE:
the packed step's positions bounded by ``batch_size x (1 + K + 1) x max_length`` (the forget answer, K
mismatch answers and a normal row per example; real steps are far shorter, see ``--tokens``), the
values each decoder layer keeps for backward (~9 x hidden + 4 x intermediate per token, in the
compute dtype; with gradient checkpointing only each layer's input plus one layer's), and float32
logit chunks (``logit_chunk`` rows x vocabulary, policy and reference, x3 for log-softmax and its
gradient). A plan "fits" when the total is within ``usable`` (85%) of the GPU's memory: the rest goes to
the allocator's fragmentation and kernels' workspaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from unlearnkit.config import RunConfig
from unlearnkit.errors import UserError

GIB = 2**30
USABLE = 0.85

# Published sizes of the architectures the paper presets use: built offline, on the meta device.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "facebook/opt-1.3b": {"model_type": "opt", "hidden_size": 2048, "ffn_dim": 8192, "num_hidden_layers": 24,
                          "num_attention_heads": 32, "vocab_size": 50272, "max_position_embeddings": 2048,
                          "word_embed_proj_dim": 2048, "tie_word_embeddings": True},
    "facebook/opt-2.7b": {"model_type": "opt", "hidden_size": 2560, "ffn_dim": 10240, "num_hidden_layers": 32,
                          "num_attention_heads": 32, "vocab_size": 50272, "max_position_embeddings": 2048,
                          "word_embed_proj_dim": 2560, "tie_word_embeddings": True},
    "meta-llama/Llama-2-7b-hf": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                                 "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                                 "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False},
    "meta-llama/Llama-2-13b-hf": {"model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824,
                                  "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40,
                                  "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False},
    "meta-llama/Llama-2-70b-hf": {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
                                  "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                                  "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False},
}

# Peaks measured on one H100 80 GB (issue 18) with the engine BEFORE packing and bf16 weights (bf16 was
# autocast over float32 weights; the LoRA base was held in float32): shown beside the plan, not the plan's layout.
MEASURED: dict[tuple[str, str, str, str], str] = {
    ("facebook/opt-1.3b", "full", "fp32", "adamw"): "30.3 GiB peak, 0.30 s/step (H100, earlier engine)",
    ("facebook/opt-1.3b", "full", "bf16", "adamw"): "30.0 GiB peak, 0.49 s/step (H100, earlier engine: bf16 = autocast over fp32 weights)",
    ("meta-llama/Llama-2-7b-hf", "lora", "bf16", "adamw"): "61.8 GiB peak, 0.85 s/step (H100, earlier engine: LoRA base held in fp32)",
    ("meta-llama/Llama-2-7b-hf", "full", "bf16", "adamw"): "out of memory at 75.9 GiB (H100, earlier engine: fp32 weights + AdamW, checkpointing)",
}


def model_config(name: str) -> Any:
    """The transformers config of ``name``: a known architecture, or a local/builtin folder's config.json."""
    from transformers import AutoConfig, CONFIG_MAPPING

    if name in ARCHITECTURES:
        sizes = dict(ARCHITECTURES[name])
        return CONFIG_MAPPING[sizes.pop("model_type")](**sizes)
    from unlearnkit.modeling import resolve_model_path

    try:
        return AutoConfig.from_pretrained(resolve_model_path(name))
    except Exception as exc:  # OSError, ValueError, HTTP errors: no config to read
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read the config of model '{name}': {first}; give a local model folder or one of "
                        f"{', '.join(ARCHITECTURES)}") from None


def meta_model(config: RunConfig) -> torch.nn.Module:
    """The run's policy (with its LoRA adapter when configured) on the meta device: shapes, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(config.model.name))
    if config.model.lora:
        from unlearnkit.modeling import add_lora

        model = add_lora(model, config.model)
    return model


@dataclass
class Plan:
    name: str
    mode: str  # full | lora
    precision: str
    optimizer: str
    parameters: int  # every weight of the model
    trainable: int
    parts: dict[str, int] = field(default_factory=dict)  # bytes: policy, reference, gradients, optimizer, activations
    tokens: int = 0  # packed positions the activation estimate assumes
    gpu_gib: float = 80.0
    measured: str = ""

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= USABLE * self.gpu_gib * GIB


def bytes_per_parameter(mode: str, precision: str, optimizer: str) -> dict[str, float]:
    """Bytes per TRAINED parameter (full: every weight) of each part, as the engine holds them on one process.
    For LoRA the frozen base is counted separately (2 or 4 bytes per base weight); no reference copy."""
    weight = 2.0 if (precision == "bf16" and mode == "full") else 4.0  # LoRA adapters stay float32
    optim = 2.0 if optimizer in ("adamw_8bit", "paged_adamw_8bit") else 8.0
    if optimizer == "adamw" and weight == 2.0:
        optim += 4.0  # float32 master weights (optim.MasterWeightAdamW)
    return {"policy": weight, "reference": (2.0 if precision == "bf16" else 4.0) if mode == "full" else 0.0,
            "gradients": weight, "optimizer": optim}


def activation_bytes(lm_config: Any, config: RunConfig, tokens: int) -> int:
    """Estimate of the activations one step holds at its peak (see the module docstring)."""
    hidden = getattr(lm_config, "hidden_size")
    inter = getattr(lm_config, "intermediate_size", None) or getattr(lm_config, "ffn_dim", 4 * hidden)
    layers = getattr(lm_config, "num_hidden_layers")
    vocab = getattr(lm_config, "vocab_size")
    width = 2 if config.train.precision == "bf16" else 4
    per_layer = (9 * hidden + 4 * inter) * width
    if config.model.gradient_checkpointing:
        body = tokens * (layers * hidden * width + per_layer)
    else:
        body = tokens * layers * per_layer
    chunk = min(config.train.logit_chunk, tokens)
    logits = chunk * vocab * 4 * 3 * 2  # float32 policy + reference chunk, log-softmax and its gradient
    return int(body + logits)


def plan(config: RunConfig, gpu_gib: float = 80.0, tokens: int | None = None) -> Plan:
    from unlearnkit.methods import METHODS, resolve_needs

    model = meta_model(config)
    lm_config = getattr(model, "config", None)
    if config.model.lora:
        lm_config = model.get_base_model().config
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trained = sum(p.numel() for p in params if p.requires_grad)
    t, m = config.train, config.method
    mode = "lora" if config.model.lora else "full"
    needs = resolve_needs(METHODS[m.name], m)
    per = bytes_per_parameter(mode, t.precision, t.optimizer)
    if mode == "full":
        parts = {"policy": per["policy"] * total, "reference": per["reference"] * total if needs.reference else 0.0,
                 "gradients": per["gradients"] * trained, "optimizer": per["optimizer"] * trained}
    else:
        base = total - trained
        # precision=bf16 holds the base's matrices in bf16 (modeling.hold_frozen_in); norms stay float32 (negligible).
        parts = {"policy": (2.0 if t.precision == "bf16" else 4.0) * base + 4.0 * trained, "reference": 0.0,
                 "gradients": 4.0 * trained, "optimizer": per["optimizer"] * trained}
    rows = 1 + m.num_mismatch + (1 if needs.normal else 0)
    tokens = tokens if tokens is not None else t.batch_size * rows * config.data.max_length
    parts["activations"] = activation_bytes(lm_config, config, tokens)
    measured = MEASURED.get((config.model.name, mode, t.precision, t.optimizer), "")
    return Plan(config.model.name, mode, t.precision, t.optimizer, total, trained, {k: int(v) for k, v in parts.items()},
                tokens, gpu_gib, measured)


def format_plan(p: Plan) -> str:
    lines = [f"memory plan: {p.name}, {p.mode} finetuning, precision={p.precision}, optimizer={p.optimizer} "
             f"({p.parameters / 1e9:.3g}B parameters, {p.trainable / 1e6:.4g}M trained), one GPU of {p.gpu_gib:g} GiB",
             f"  {'part':<12} {'GiB':>8}"]
    for key, value in p.parts.items():
        note = f"  (estimate, {p.tokens} packed positions)" if key == "activations" else ""
        lines.append(f"  {key:<12} {value / GIB:>8.2f}{note}")
    lines.append(f"  {'total':<12} {p.total / GIB:>8.2f}")
    verdict = "fits" if p.fits else "does NOT fit"
    lines.append(f"  {verdict}: {p.total / GIB:.1f} GiB of the {USABLE:.0%} usable ({USABLE * p.gpu_gib:.1f} GiB) of {p.gpu_gib:g} GiB")
    if p.measured:
        lines.append(f"  measured: {p.measured}")
    else:
        lines.append("  measured: no measured row for this setup yet (benchmarks/bench_gpu.py measures peaks on a GPU)")
    return "\n".join(lines)
