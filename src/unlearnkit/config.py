"""Typed configuration of an unlearning run: YAML presets plus ``key=value`` overrides.

A run config has five sections (model, data, method, train, eval). Every field name is unique across
sections, so an override may name a field bare (``lr=1e-5``) or with its section (``train.lr=1e-5``);
the section names ``model`` and ``method`` also stand for their ``name`` field (``model=gpt2``).
Unknown keys and values of the wrong type are errors at load time, naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unlearnkit.errors import UserError
from unlearnkit.methods import METHODS


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None, **kwargs: Any) -> Any:
    """A dataclass field carrying its help text (shown by ``unlearnkit run --help``)."""
    metadata = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class ModelConfig:
    name: str = _f("smollm2-135m", "builtin model name, local folder, or Hugging Face hub name")
    revision: str | None = _f(None, "hub revision (branch, tag or commit) of the model")
    trust_remote_code: bool = _f(False, "allow custom modelling code from the hub (off unless you trust it)")
    lora: bool = _f(False, "train a LoRA adapter instead of all weights (reference = adapter disabled)")
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA scaling alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout (0 keeps runs bit-reproducible)")
    lora_target_modules: str = _f("all-linear", "comma-separated module names to adapt, or all-linear")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")


@dataclass
class DataConfig:
    forget: str = _f("pku_harmful_train", "forget set: builtin dataset name, local .jsonl/.csv/.parquet, or hub dataset (hf:NAME)")
    normal: str = _f("truthfulqa_train", "normal set (same forms as forget)")
    forget_split: str = _f("train", "split of a hub forget dataset")
    normal_split: str = _f("train", "split of a hub normal dataset")
    forget_question_column: str = _f("question", "column of the forget set holding the prompt")
    forget_answer_column: str = _f("answer", "column of the forget set holding the answer to forget")
    normal_question_column: str = _f("question", "column of the normal set holding the prompt")
    normal_answer_column: str = _f("answer", "column of the normal set holding the answer")
    forget_preferred_column: str = _f("", "column of the forget set holding a preferred alternative answer (method dpo), "
                                      "e.g. right_answer of halueval_train or a safer response of PKU-SafeRLHF")
    forget_where: str = _f("", "keep forget rows matching column=value[,column=value] (e.g. is_response_0_safe=false)")
    normal_where: str = _f("", "keep normal rows matching column=value[,column=value]")
    max_forget: int = _f(0, "use at most this many forget examples (0 = all)")
    max_normal: int = _f(0, "use at most this many normal examples (0 = all)")
    mismatch_pool: str = _f("", "random-mismatch answers: the answers of this data source (same forms as forget; e.g. "
                            "gutenberg_austen, prose of another book) instead of the normal answers (the paper's choice; "
                            "empty = the normal answers)")
    normal_answers: str = _f("dataset", "normal (KL and mismatch) answers: the dataset's, or 'self' = the original model's own greedy "
                             "answers to the normal prompts (generated once, cached)", choices=("dataset", "self"))
    template: str = _f("paper", "prompt format", choices=("paper", "chat", "plain"))
    max_length: int = _f(128, "max tokens per sequence (prompt is cut from the left first, keeping part of the answer)")


@dataclass
class MethodConfig:
    name: str = _f("ga_mismatch_kl", "unlearning method (see `unlearnkit methods`)")
    w_forget: float = _f(0.5, "weight of the gradient-ascent term (paper epsilon_1)")
    w_mismatch: float = _f(1.0, "weight of the random-mismatch term (paper epsilon_2)")
    w_normal: float = _f(1.0, "weight of the KL term on normal data (paper epsilon_3)")
    num_mismatch: int = _f(5, "K: mismatch answers drawn per forget example")
    template_reply: str = _f("I can't help with that.", "fixed reply used as the mismatch target by the templated method")
    # The field's methods (see `unlearnkit methods`); defaults are the authors'.
    regularizer: str = _f("auto", "term that keeps normal behaviour in the field's methods: auto = the method's own default, "
                          "none, kl (KL(original||current) on normal data, weight w_normal), retain_nll (NLL of normal "
                          "answers, weight w_retain); the paper's methods fix theirs", choices=("auto", "none", "kl", "retain_nll"))
    w_retain: float = _f(1.0, "weight of the retain-NLL regularizer (NLL of the normal answers)")
    npo_beta: float = _f(0.1, "NPO inverse temperature beta (Zhang et al. 2024)")
    simnpo_beta: float = _f(2.5, "SimNPO inverse temperature beta (Fan et al. 2024)")
    simnpo_gamma: float = _f(0.0, "SimNPO reward margin gamma (Fan et al. 2024)")
    dpo_beta: float = _f(0.1, "DPO inverse temperature beta for dpo and idk_dpo")
    rmu_layer: int = _f(7, "RMU: decoder layer (0-based) whose output hidden states are steered (Li et al. 2024: 7)")
    rmu_coeff: float = _f(6.5, "RMU: scale c of the random target vector (Li et al. 2024, Zephyr-7B: 6.5)")
    rmu_alpha: float = _f(1200.0, "RMU: weight alpha of the retain activation MSE (Li et al. 2024, Zephyr-7B: 1200)")
    rmu_params: str = _f("mlp_out", "RMU: what trains: mlp_out = the MLP output projections of layers rmu_layer-2..rmu_layer "
                         "(the authors' choice), all = every trainable weight", choices=("mlp_out", "all"))
    rmu_seed: int = _f(0, "RMU: seed of the fixed random direction u")


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/unlearn", "folder for the model, config, logs and checkpoints")
    max_steps: int = _f(1000, "maximum optimizer steps")
    batch_size: int = _f(2, "forget (and normal) examples per step")
    lr: float = _f(2e-6, "AdamW learning rate (linear decay)")
    warmup_steps: int = _f(0, "linear warm-up steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)")
    sam_rho: float = _f(0.0, "sharpness-aware updates (SAM, Foret et al. 2021; against relearning: Fan et al. 2025): each step's "
                        "gradient is taken at the weights moved rho along the normalised gradient, so the run settles where "
                        "nearby weights forget too; 0 = off (each step then costs one forward/backward more)")
    precision: str = _f("fp32", "fp32, or bf16: the policy's weights held in bf16 (with optimizer=adamw: float32 master weights in "
                        "the optimizer), the reference and the LoRA base in bf16, logits and losses in float32 chunks "
                        "(under FSDP: bf16 compute over float32 weights)", choices=("fp32", "bf16"))
    optimizer: str = _f("adamw", "adamw (torch fused AdamW; float32 master weights under precision=bf16); adamw_8bit (torchao "
                        "8-bit AdamW, bf16 weights updated with stochastic rounding: 2 bytes of state per parameter instead "
                        "of 8); paged_adamw_8bit (bitsandbytes, 8-bit state paged to host memory under GPU memory pressure)",
                        choices=("adamw", "adamw_8bit", "paged_adamw_8bit"))
    compile: str = _f("auto", "torch.compile the decoder body (packed row lengths rounded up to multiples of 64 so shapes "
                      "repeat): auto = on with CUDA (not under FSDP), off on CPU; true; false", choices=("auto", "true", "false"))
    attention: str = _f("auto", "attention kernel of the packed step (must honour its per-sequence mask): auto (= sdpa; eager "
                        "measured within noise of it on CPU), sdpa or eager", choices=("auto", "sdpa", "eager"))
    pack_tokens: int = _f(512, "soft length of a packed row: sequences are packed into rows of about this many tokens "
                          "(attention cost grows with the square of a row's length)")
    logit_chunk: int = _f(1024, "read positions per LM-head chunk (bounds the [chunk, vocab] logits held at once)")
    seed: int = _f(42, "seed for data order, mismatch draws and initialisation")
    save_every: int = _f(100, "write a checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = _f(2, "how many recent checkpoints to keep")
    forget_threshold: float | None = _f(None, "paper's stop rule: once the forget NLL exceeds this, run continue_factor x more steps")
    continue_factor: float = _f(3.0, "multiple of the steps taken so far to continue after the threshold is reached")
    time_budget_s: float | None = _f(None, "stop after this many seconds of training (checkpointed)")
    save_mode: str = _f("merged", "final output", choices=("merged", "adapter", "both"))
    overwrite: bool = _f(False, "allow writing into a non-empty output_dir without --resume")
    progress: bool = _f(True, "show a progress bar")
    # The utility guard (unlearnkit.guard; docs/frontier.md): checks benign answers while training and exports
    # the step with the most forgetting whose utility held.
    guard_every: int = _f(0, "utility guard: every N steps (and at the last step) answer guard_prompts benign prompts greedily and "
                          "score them against the original model's answers; 0 = off")
    guard_set: str = _f("guard_benign", "utility guard's validation prompts (builtin name or local file with a question column); "
                        "must share no prompt with any evaluation set or the training data")
    guard_prompts: int = _f(16, "utility guard: how many guard_set prompts (and forget examples in its forgetting probe) per check")
    guard_max_new_tokens: int = _f(48, "utility guard: tokens generated per prompt")
    guard_min_similarity: float = _f(0.6, "utility guard: utility holds while the mean MiniLM similarity to the original's answers "
                                     "is at least this")
    guard_max_nm: float | None = _f(None, "utility guard: utility holds while at most this share of answers is not meaningful (null = no limit)")
    guard_action: str = _f("keep_best", "utility guard: keep_best = train to the end, export the held step with the most forgetting; "
                           "stop = stop when utility breaks, export the last held step", choices=("keep_best", "stop"))


TRAINED = "trained"
"""An eval set given as ``trained`` is the run's own forget data: same source, split, columns, filter, limit."""


@dataclass
class EvalConfig:
    eval_before_after: bool = _f(False, "evaluate the original and the unlearned model after training (results.json)")
    judge: str = _f("builtin", "harm judge: builtin, a classifier model name/path, or generative:NAME")
    judge_threshold: float | None = _f(None, "override the judge's decision threshold")
    eval_forget: str = _f(TRAINED, "harmful prompts the model was asked to forget: 'trained' = the run's forget data; '' = none")
    eval_heldout: str = _f("pku_harmful_test", "held-out harmful prompts never trained on (checked disjoint from the forget data)")
    eval_benign: str = _f("selfinstruct_benign", "benign instructions never trained on: on-topic rate, similarity to the original, refusals")
    eval_benign2: str = _f("", "a second benign source never trained on (utility on more than one source), e.g. toxicchat_benign "
                           "(real user prompts); '' = none")
    eval_overrefusal: str = _f("xstest_safe", "safe prompts that look unsafe: refusal rate (over-refusal)")
    eval_normal: str = _f("truthfulqa_test", "normal Q&A with reference answers: normal_ppl (marked in-distribution when it shares the normal data's source)")
    eval_extraction: str = _f("", "extraction prompts (prefix -> true continuation) for the leak rate: 'trained', a dataset, or '' = none")
    eval_hallucination: str = _f("", "held-out hallucination set (question, answer = hallucinated, right_answer); '' = none")
    eval_max_prompts: int = _f(50, "prompts per evaluation set (0 = all)")
    max_new_tokens: int = _f(64, "tokens generated per prompt")
    eval_batch_size: int = _f(32, "prompts generated per batch")
    do_sample: bool = _f(False, "sample instead of greedy decoding")
    temperature: float = _f(1.0, "sampling temperature (with do_sample)")
    top_p: float = _f(1.0, "nucleus sampling p (with do_sample)")
    eval_device: str = _f("auto", "device for evaluation models and judges: auto (cuda when available), cpu, cuda, cuda:N")
    eval_dtype: str = _f("auto", "weights dtype for evaluation: auto (bf16 on GPU, fp32 on CPU)", choices=("auto", "fp32", "bf16", "fp16"))


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig, "train": TrainConfig, "eval": EvalConfig}
# A section name given as a bare key stands for this field of the section (`model=gpt2`, `method=ga`).
SECTION_PRIMARY = {"model": "name", "method": "name"}


def _field_index() -> dict[str, tuple[str, dataclasses.Field]]:
    """Map each bare field name to (section, field); names are unique by construction (checked here)."""
    index: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name in SECTION_PRIMARY.values() and section in SECTION_PRIMARY:
                continue  # `name` is reached through the section key
            assert f.name not in index, f"config field {f.name!r} is not unique"
            index[f.name] = (section, f)
    return index


FIELD_INDEX = _field_index()


def resolve_key(key: str) -> tuple[str, dataclasses.Field]:
    """Turn an override key (``lr``, ``train.lr``, ``model``) into (section, field) or raise UserError."""
    if "." in key:
        section, _, name = key.partition(".")
        cls = SECTIONS.get(section)
        fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
        if name not in fields:
            raise UserError(f"unknown config key '{key}'; run `unlearnkit run --help` for the fields")
        return section, fields[name]
    if key in SECTION_PRIMARY:
        cls = SECTIONS[key]
        return key, next(f for f in dataclasses.fields(cls) if f.name == SECTION_PRIMARY[key])
    if key not in FIELD_INDEX:
        raise UserError(f"unknown config key '{key}'; run `unlearnkit run --help` for the fields")
    return FIELD_INDEX[key]


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(underlying type, optional?) of a field annotation such as ``float | None``."""
    hint = eval(annotation, vars(typing)) if isinstance(annotation, str) else annotation  # noqa: S307 (our own literals)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def coerce_value(key: str, f: dataclasses.Field, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise UserError naming the key."""
    kind, optional = _base_type(f.type)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise UserError(f"config key '{key}' must be a {kind.__name__}, got null")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value)) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            if isinstance(value, bool):  # YAML reads `compile: true` as a bool; the field's choices are words
                return "true" if value else "false"
            return str(value)
    except (ValueError, TypeError):  # TypeError: a YAML list or mapping where a number belongs
        raise UserError(f"config key '{key}' must be a {kind.__name__}, got {value!r}") from None
    raise AssertionError(f"unsupported config type {kind}")


def _set(config: RunConfig, key: str, value: Any) -> None:
    section, f = resolve_key(key)
    coerced = coerce_value(key, f, value)
    choices = f.metadata.get("choices")
    if choices and coerced not in choices:
        raise UserError(f"config key '{key}' must be one of {', '.join(choices)}; got {coerced!r}")
    setattr(getattr(config, section), f.name, coerced)


def _flatten_yaml(data: Any, source: str) -> list[tuple[str, Any]]:
    """YAML mapping -> [(key, value)], accepting sections (``train: {lr: ..}``) or bare keys."""
    if data is None:
        return []
    if not isinstance(data, dict):
        raise UserError(f"config file {source} must hold a mapping of keys to values")
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            items.extend((f"{key}.{k}", v) for k, v in value.items())
        else:
            items.append((str(key), value))
    return items


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise UserError(f"override '{text}' is not key=value; e.g. lr=1e-5")
    key, _, value = text.partition("=")
    return key.strip(), value.strip()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, validated; raises UserError on any bad key or value."""
    config = RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} not found; pass an existing YAML file to --config")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        for key, value in _flatten_yaml(data, str(path)):
            _set(config, key, value)
    for text in overrides or []:
        _set(config, *parse_override(text))
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Range checks that types alone cannot express."""
    t, m, d = config.train, config.method, config.data
    checks = [
        (t.max_steps >= 1, "max_steps must be >= 1"),
        (t.batch_size >= 1, "batch_size must be >= 1"),
        (math.isfinite(t.lr) and t.lr > 0, "lr must be a finite number > 0"),
        (t.save_every >= 0, "save_every must be >= 0"),
        (t.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (t.pack_tokens >= 1 and t.logit_chunk >= 1, "pack_tokens and logit_chunk must be >= 1"),
        (math.isfinite(t.continue_factor) and t.continue_factor >= 0, "continue_factor must be a finite number >= 0"),
        (math.isfinite(t.sam_rho) and t.sam_rho >= 0, "sam_rho must be a finite number >= 0"),
        (m.num_mismatch >= 1, "num_mismatch must be >= 1"),
        (all(math.isfinite(w) and w >= 0 for w in (m.w_forget, m.w_mismatch, m.w_normal)), "method weights must be finite and >= 0"),
        (d.max_length >= 8, "max_length must be >= 8"),
        (config.model.lora_r >= 1, "lora_r must be >= 1"),
        (t.save_mode == "merged" or config.model.lora, "save_mode adapter/both needs lora=true"),
        (t.save_mode != "adapter" or not config.eval.eval_before_after, "eval_before_after needs save_mode merged or both"),
        (config.eval.eval_max_prompts >= 0 and config.eval.max_new_tokens >= 1, "eval_max_prompts >= 0 and max_new_tokens >= 1"),
        (config.eval.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
        (config.eval.eval_device == "auto" or config.eval.eval_device.split(":")[0] in ("cpu", "cuda", "mps"),
         "eval_device must be auto, cpu, cuda or cuda:N"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"bad config: {message}")
    if m.name not in METHODS:
        raise UserError(f"unknown method '{m.name}'; choose one of: {', '.join(METHODS)}")
    method_checks = [
        (all(math.isfinite(w) and w >= 0 for w in (m.w_retain, m.rmu_alpha)), "w_retain and rmu_alpha must be finite and >= 0"),
        (all(math.isfinite(b) and b > 0 for b in (m.npo_beta, m.simnpo_beta, m.dpo_beta)), "npo_beta, simnpo_beta and dpo_beta must be > 0"),
        (math.isfinite(m.simnpo_gamma) and m.simnpo_gamma >= 0, "simnpo_gamma must be finite and >= 0"),
        (m.rmu_layer >= 0, "rmu_layer must be >= 0 (a decoder layer index)"),
        (math.isfinite(m.rmu_coeff) and m.rmu_coeff > 0, "rmu_coeff must be finite and > 0"),
    ]
    for ok, message in method_checks:
        if not ok:
            raise UserError(f"bad config: {message}")
    guard_checks = [
        (t.guard_every >= 0, "guard_every must be >= 0 (0 = off)"),
        (t.guard_prompts >= 1 and t.guard_max_new_tokens >= 1, "guard_prompts and guard_max_new_tokens must be >= 1"),
        (math.isfinite(t.guard_min_similarity) and -1 <= t.guard_min_similarity <= 1, "guard_min_similarity must be in [-1, 1]"),
        (t.guard_max_nm is None or (math.isfinite(t.guard_max_nm) and 0 <= t.guard_max_nm <= 1), "guard_max_nm must be in [0, 1] or null"),
        (not t.guard_every or bool(t.guard_set.strip()), "guard_set is empty; name the guard's validation prompts (builtin: guard_benign)"),
    ]
    for ok, message in guard_checks:
        if not ok:
            raise UserError(f"bad config: {message}")
    method = METHODS[m.name]
    if m.regularizer != "auto" and m.regularizer not in method.regularizers:
        allowed = ", ".join(method.regularizers) if method.regularizers else "only auto (its objective is fixed)"
        raise UserError(f"method {m.name} takes regularizer {allowed}; got {m.regularizer!r}")
    if d.mismatch_pool.strip() and method.needs.mismatch != "normal":
        raise UserError(f"mismatch_pool is set but method {m.name} has no random-mismatch term; use ga_mismatch or ga_mismatch_kl, "
                        "or leave mismatch_pool empty")
    if method.needs.preferred == "column" and not d.forget_preferred_column:
        raise UserError(f"method {m.name} needs forget_preferred_column: the forget-set column holding the preferred answer")


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def describe_fields() -> str:
    """Every field with section, type, default and help: the body of ``unlearnkit run --help``."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            kind, optional = _base_type(f.type)
            key = section if SECTION_PRIMARY.get(section) == f.name else f.name
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            choices = f.metadata.get("choices")
            type_text = "|".join(choices) if choices else kind.__name__ + ("|null" if optional else "")
            lines.append(f"  {key:<24} {type_text:<12} default {default!r}: {f.metadata['help']}")
    return "\n".join(lines)
