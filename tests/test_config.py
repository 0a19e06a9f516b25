"""Tests for unlearnkit.config: paper defaults, YAML files, key=value overrides, validation, round trips."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from unlearnkit.config import (
    SECTIONS,
    RunConfig,
    describe_fields,
    load_config,
    save_config,
)
from unlearnkit.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ defaults
def test_defaults_are_the_papers() -> None:
    config = load_config()
    assert config == RunConfig()
    assert config.train.lr == 2e-6
    assert config.train.batch_size == 2
    assert config.train.max_steps == 1000
    assert config.method.name == "ga_mismatch_kl"
    assert config.method.num_mismatch == 5
    assert (config.method.w_forget, config.method.w_mismatch, config.method.w_normal) == (0.5, 1.0, 1.0)
    assert config.data.template == "paper"
    assert config.train.forget_threshold is None


# ------------------------------------------------------------------------------------------ YAML
def test_yaml_with_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "model:\n  name: my-model\n  lora: true\n  lora_r: 4\n"
        "data:\n  template: chat\n  max_length: 64\n"
        "method:\n  name: ga\n  w_forget: 2\n"
        "train:\n  lr: 1.0e-5\n  max_steps: 7\n  forget_threshold: 3.5\n",
    )
    config = load_config(path)
    assert (config.model.name, config.model.lora, config.model.lora_r) == ("my-model", True, 4)
    assert (config.data.template, config.data.max_length) == ("chat", 64)
    assert config.method.name == "ga"
    assert config.method.w_forget == 2.0 and isinstance(config.method.w_forget, float)  # int in YAML -> float
    assert (config.train.lr, config.train.max_steps, config.train.forget_threshold) == (1e-5, 7, 3.5)
    # Untouched fields keep their defaults.
    assert config.train.batch_size == 2 and config.method.num_mismatch == 5


def test_yaml_with_bare_keys(tmp_path: Path) -> None:
    # PyYAML reads "1e-5" (no dot) as a string; the float field must still accept it.
    path = write(tmp_path, "lr: 1e-5\nmax_steps: 3\nmodel: foo\nmethod: ga_kl\nlora: false\nnum_mismatch: 2\n")
    config = load_config(path)
    assert config.train.lr == 1e-5
    assert config.train.max_steps == 3
    assert config.model.name == "foo"
    assert config.method.name == "ga_kl"
    assert config.model.lora is False
    assert config.method.num_mismatch == 2


def test_yaml_scalars_for_a_string_field_become_strings(tmp_path: Path) -> None:
    # An unquoted number or bool in YAML names a file/model here: it must arrive as text.
    config = load_config(write(tmp_path, "eval_normal: 123\nmodel: 1.5\n"))
    assert config.eval.eval_normal == "123"
    assert config.model.name == "1.5"


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == RunConfig()


def test_overrides_win_over_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: 1.0e-5\n  max_steps: 7\n")
    config = load_config(path, ["lr=3e-4"])
    assert config.train.lr == 3e-4 and config.train.max_steps == 7


# ------------------------------------------------------------------------------------------ overrides
@pytest.mark.parametrize(
    "override, section, name, value",
    [
        ("lr=1e-5", "train", "lr", 1e-5),
        ("train.lr=1e-5", "train", "lr", 1e-5),
        ("model=foo", "model", "name", "foo"),
        ("model.name=foo", "model", "name", "foo"),
        ("method=ga", "method", "name", "ga"),
        ("method.name=templated", "method", "name", "templated"),
        ("lora=true", "model", "lora", True),
        ("lora=0", "model", "lora", False),
        ("max_steps=3", "train", "max_steps", 3),
        ("forget_threshold=null", "train", "forget_threshold", None),
        ("forget_threshold=2.5", "train", "forget_threshold", 2.5),
        ("revision=none", "model", "revision", None),
        ("template=plain", "data", "template", "plain"),
        ("precision=bf16", "train", "precision", "bf16"),
        ("w_mismatch=0", "method", "w_mismatch", 0.0),
        ("template_reply=No. I won't.", "method", "template_reply", "No. I won't."),
        ("eval_normal=x=y.jsonl", "eval", "eval_normal", "x=y.jsonl"),  # only the first '=' splits
    ],
)
def test_override(override: str, section: str, name: str, value: object) -> None:
    config = load_config(None, [override])
    got = getattr(getattr(config, section), name)
    assert got == value and type(got) is type(value)


def test_later_override_wins() -> None:
    assert load_config(None, ["lr=1e-5", "train.lr=3e-5"]).train.lr == 3e-5


@pytest.mark.parametrize("override, key", [("foo=1", "foo"), ("train.foo=1", "train.foo"), ("eval.lr=1", "eval.lr"), ("name=x", "name")])
def test_unknown_key_is_named(override: str, key: str) -> None:
    with pytest.raises(UserError, match=f"'{key}'"):
        load_config(None, [override])


def test_unknown_key_in_yaml_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="'train.learning_rate'"):
        load_config(write(tmp_path, "train:\n  learning_rate: 1\n"))
    with pytest.raises(UserError, match="'colour'"):
        load_config(write(tmp_path, "colour: blue\n"))


def test_override_without_equals_sign() -> None:
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["lr"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("max_steps=abc", "max_steps"),
        ("max_steps=2.5", "max_steps"),
        ("max_steps=null", "max_steps"),
        ("lora=maybe", "lora"),
        ("lr=fast", "lr"),
        ("train.batch_size=two", "train.batch_size"),
    ],
)
def test_wrong_type_override_names_the_key(override: str, key: str) -> None:
    with pytest.raises(UserError, match=f"'{key}'"):
        load_config(None, [override])


@pytest.mark.parametrize(
    "text, key",
    [
        ("max_steps: true\n", "max_steps"),  # a bool is not an int
        ("lora: maybe\n", "lora"),
        ("lr: true\n", "lr"),
        ("model: [a, b]\n", "model"),  # a list is not a str
        ("train:\n  max_steps: 2.5\n", "train.max_steps"),
        ("train:\n  max_steps: null\n", "train.max_steps"),
    ],
)
def test_wrong_type_in_yaml_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(UserError, match=f"'{key}'"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("text, key", [("lr: [1]\n", "lr"), ("train:\n  max_steps: [3]\n", "train.max_steps"), ("lr: {a: 1}\n", "lr")])
def test_list_or_mapping_for_a_number_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(UserError, match=f"'{key}'"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("override, key", [("template=xml", "template"), ("precision=fp16", "precision"), ("save_mode=all", "save_mode")])
def test_choices(override: str, key: str) -> None:
    with pytest.raises(UserError, match=f"'{key}' must be one of"):
        load_config(None, [override])


def test_unknown_method() -> None:
    with pytest.raises(UserError, match="unknown method 'npo_typo'"):
        load_config(None, ["method=npo_typo"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_steps=0", "max_steps"),
        ("batch_size=0", "batch_size"),
        ("lr=0", "lr"),
        ("lr=nan", "lr"),
        ("num_mismatch=0", "num_mismatch"),
        ("w_forget=-1", "weights"),
        ("max_length=4", "max_length"),
        ("save_mode=adapter", "lora"),
    ],
)
def test_range_checks(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_mismatch_pool_needs_a_method_with_a_mismatch_term() -> None:
    assert load_config(None, ["mismatch_pool=gutenberg_austen"]).data.mismatch_pool == "gutenberg_austen"
    with pytest.raises(UserError, match="mismatch_pool is set but method npo has no random-mismatch term"):
        load_config(None, ["method=npo", "mismatch_pool=gutenberg_austen"])


def test_adapter_save_mode_with_lora_is_fine() -> None:
    assert load_config(None, ["lora=true", "save_mode=adapter"]).train.save_mode == "adapter"


def test_infinite_lr_is_rejected() -> None:
    with pytest.raises(UserError, match="lr"):
        load_config(None, ["lr=inf"])


# ------------------------------------------------------------------------------------------ files
def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path, "train: {lr: 1\nmodel: [\n"))


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="mapping"):
        load_config(write(tmp_path, "- lr\n- 1\n"))


def test_save_config_round_trips(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "model=some/model", "lora=true", "lora_r=16", "save_mode=both", "template=chat", "method=templated",
            "w_forget=0.25", "template_reply=I won't: no.", "lr=3e-5", "forget_threshold=4.5", "time_budget_s=60",
            "judge_threshold=0.7", "revision=null", "seed=7", "eval_normal=123",
        ],
    )
    path = tmp_path / "resolved.yaml"
    save_config(config, path)
    loaded = load_config(path)
    assert loaded == config
    assert loaded.eval.eval_normal == "123"  # a numeric-looking string stays a string
    assert loaded.model.revision is None


def test_describe_fields_mentions_every_field() -> None:
    text = describe_fields()
    for section, cls in SECTIONS.items():
        assert f"{section}:" in text
        for f in dataclasses.fields(cls):
            # `name` is shown under its section key (`model`, `method`), as the user types it.
            shown = section if f.name == "name" else f.name
            assert f"  {shown} " in text, f"{section}.{f.name} missing"
            assert f.metadata["help"] in text
    assert "paper|chat|plain" in text  # choices are listed


def test_every_shipped_config_loads() -> None:
    # configs/accelerate/ holds accelerate's own launch configs, not run configs.
    paths = sorted(p for p in (REPO_ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.relative_to(REPO_ROOT / "configs").parts)
    assert len(paths) >= 10 and any(p.parent.name == "paper" for p in paths)
    for path in paths:
        if path.parent.name == "bench":  # benchmark presets: a `bench` section plus the run keys
            from unlearnkit.bench.tofu import load_bench_config

            config = load_bench_config(path, [])[1]
        else:
            config = load_config(path)
        assert config.train.max_steps >= 1, path
        assert math.isfinite(config.train.lr) and config.train.lr > 0, path


def test_methods_do_not_depend_on_the_config():
    """The dependency is one way (config -> methods -> losses): methods read settings through
    methods.MethodSettings, which MethodConfig satisfies field for field, and never import the config."""
    import os
    import subprocess
    import sys
    import typing

    from tests.conftest import REPO
    from unlearnkit import methods
    from unlearnkit.config import MethodConfig

    source = (REPO / "src" / "unlearnkit" / "methods.py").read_text()
    assert "unlearnkit.config" not in source and "MethodConfig" not in source.replace("config.MethodConfig", "")
    wanted = typing.get_type_hints(methods.MethodSettings)
    fields = {f.name: f.type for f in dataclasses.fields(MethodConfig)}
    for name, kind in wanted.items():
        assert name in fields, f"MethodConfig lacks {name}, which methods read"
        assert fields[name] in (kind, kind.__name__), (name, fields[name], kind)
    code = "import sys, unlearnkit.methods; print('unlearnkit.config' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}).stdout.strip()
    assert out == "False"
