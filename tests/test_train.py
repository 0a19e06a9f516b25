"""Training loop: the sign of gradient ascent, the KL reference, LoRA, stop rules, outputs and resume."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from unlearnkit.config import load_config
from unlearnkit.data import StepBatcher, load_qa, pad_id_of, tokenize_qa
from unlearnkit.losses import answer_nll
from unlearnkit.methods import METHODS
from unlearnkit.modeling import Reference, add_lora, load_model
from unlearnkit.train import compute_terms, prepare_data, train


def make_config(model_dir: Path, qa_files, out: Path, *overrides: str):
    forget, normal = qa_files
    return load_config(None, [f"model={model_dir}", f"forget={forget}", f"normal={normal}", f"output_dir={out}",
                              "progress=false", "lr=1e-2", "max_steps=3", "num_mismatch=2", *overrides])


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def forget_nll_of(model, config, step: int = 0) -> float:
    """Mean answer NLL of the forget examples in the batch of ``step``."""
    tokenizer = AutoTokenizer.from_pretrained(config.model.name)
    batcher = prepare_data(config, tokenizer, METHODS["ga"])
    batch = batcher(step).batch
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(answer_nll(logits, batch["labels"]).mean())


def test_one_gradient_ascent_step_raises_forget_nll(tiny_model_dir, qa_files, tmp_path):
    config = make_config(tiny_model_dir, qa_files, tmp_path / "out", "method=ga", "max_steps=1")
    before = forget_nll_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
    train(config)
    after = forget_nll_of(AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model"), config)
    assert after > before + 1e-3


def test_full_method_logs_every_term_and_kl_starts_at_zero(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "out"
    result = train(make_config(tiny_model_dir, qa_files, out))
    log = read_log(out)
    assert [row["step"] for row in log] == [1, 2, 3] and result.steps == 3
    for row in log:
        assert {"forget_nll", "mismatch_nll", "kl", "loss", "lr", "tokens_per_s"} <= row.keys()
        assert row["mismatch_nll"] is not None and row["kl"] is not None
    # Step 1 is computed before any update: policy == reference, so KL is zero up to float error.
    assert abs(log[0]["kl"]) < 1e-6
    assert log[1]["kl"] > 1e-6  # and the policy has moved since
    assert log[0]["lr"] == pytest.approx(1e-2) and log[2]["lr"] < log[1]["lr"] < log[0]["lr"]  # linear decay


def test_loss_is_the_weighted_sum_of_logged_terms(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "out"
    train(make_config(tiny_model_dir, qa_files, out, "w_forget=0.3", "w_mismatch=2", "w_normal=5"))
    for row in read_log(out):
        assert row["loss"] == pytest.approx(-0.3 * row["forget_nll"] + 2 * row["mismatch_nll"] + 5 * row["kl"], rel=1e-4, abs=1e-5)


def test_reference_is_unchanged_by_training_steps(tiny_model_dir, qa_files, tmp_path):
    config = make_config(tiny_model_dir, qa_files, tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batcher = prepare_data(config, tokenizer, METHODS["ga_mismatch_kl"])
    policy = load_model(config.model)
    reference = Reference(policy, lora=False)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    batch = batcher(0).batch
    for step in range(3):
        terms = compute_terms(policy, reference, batcher(step))
        METHODS["ga_mismatch_kl"].combine(terms, config.method).backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        expected = original(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        moved = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = reference.logits(policy, batch["input_ids"], batch["attention_mask"])
    assert torch.equal(got, expected)
    assert not torch.allclose(moved, expected)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_lora_uses_no_second_copy_and_leaves_base_weights_unchanged(tiny_model_dir, qa_files, tmp_path):
    config = make_config(tiny_model_dir, qa_files, tmp_path / "out", "lora=true", "save_mode=both")
    policy = add_lora(load_model(config.model), config.model)
    reference = Reference(policy, lora=True)
    assert reference.frozen is None  # the reference is the adapter-disabled policy itself
    base_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batcher = prepare_data(config, tokenizer, METHODS["ga_mismatch_kl"])
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    batch = batcher(0).batch
    with torch.no_grad():
        ref_before = reference.logits(policy, batch["input_ids"], batch["attention_mask"])
    for step in range(2):
        METHODS["ga_mismatch_kl"].combine(compute_terms(policy, reference, batcher(step)), config.method).backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in policy.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base_before[name]), name
    assert torch.equal(reference.logits(policy, batch["input_ids"], batch["attention_mask"]), ref_before)

    digest = _digest(tiny_model_dir)
    train(config)
    assert _digest(tiny_model_dir) == digest  # the input model folder is never modified
    out = tmp_path / "out"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed and all("proj" in n for n in changed)  # only adapted linear layers differ after merging


def test_forget_threshold_stop_rule(tiny_model_dir, qa_files, tmp_path):
    # The first step's forget NLL (~ln V) exceeds 0, so the run stops after 1 + ceil(3 * 1) = 4 steps.
    result = train(make_config(tiny_model_dir, qa_files, tmp_path / "out", "max_steps=10", "forget_threshold=0", "continue_factor=3"))
    assert result.steps == 4 and "forget NLL" in result.stop_reason


def test_threshold_never_reached_runs_to_max_steps(tiny_model_dir, qa_files, tmp_path):
    result = train(make_config(tiny_model_dir, qa_files, tmp_path / "out", "max_steps=3", "forget_threshold=1e9"))
    assert result.steps == 3 and result.stop_reason == "max_steps"


def test_time_budget_stops_and_still_writes_the_model(tiny_model_dir, qa_files, tmp_path):
    result = train(make_config(tiny_model_dir, qa_files, tmp_path / "out", "max_steps=50", "time_budget_s=1e-9"))
    assert result.steps == 1 and "time budget" in result.stop_reason
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_outputs_load_with_plain_transformers_and_carry_a_card(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "out"
    train(make_config(tiny_model_dir, qa_files, out, "save_every=2", "max_steps=5", "keep_checkpoints=2"))
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model is not None and AutoTokenizer.from_pretrained(out / "model") is not None
    card = (out / "model" / "README.md").read_text()
    assert "ga_mismatch_kl" in card and "forget.jsonl" in card
    saved = load_config(out / "config.yaml")
    assert saved.train.max_steps == 5 and saved.model.name == str(tiny_model_dir)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-5"]
    assert json.loads((out / "run_info.json").read_text())["steps"] == 5


CRASH_SCRIPT = """
import os, sys
from unlearnkit.config import load_config
from unlearnkit.train import train
config = load_config(None, sys.argv[2:])
train(config, on_step_end=lambda step: os._exit(9) if step == int(sys.argv[1]) else None)
"""


@pytest.mark.parametrize("lora", ["false", "true"])
def test_resume_after_kill_matches_uninterrupted_run(tiny_model_dir, qa_files, tmp_path, lora):
    common = [f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false", "lr=1e-2",
              "max_steps=5", "save_every=2", "num_mismatch=2", f"lora={lora}"]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    train(load_config(None, [*common, f"output_dir={straight}"]))
    # Die abruptly (no cleanup, like kill -9) right after step 3, i.e. one step past the step-2 checkpoint.
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, "3", *common, f"output_dir={crashed}"], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert not (crashed / "model").exists() and (crashed / "checkpoints" / "step-2").is_dir()
    assert [row["step"] for row in read_log(crashed)] == [1, 2, 3]
    train(load_config(None, [*common, f"output_dir={crashed}"]), resume=True)
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(crashed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [row["step"] for row in read_log(crashed)] == [1, 2, 3, 4, 5]
    assert [row["loss"] for row in read_log(crashed)] == [row["loss"] for row in read_log(straight)]


def test_step_batch_is_one_padded_forward(tiny_model_dir, qa_files):
    """[forget; mismatch; normal] share one tensor: B + B*K + B rows, one padded length."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    forget = tokenize_qa(tokenizer, load_qa(str(qa_files[0])), "chat")
    normal = tokenize_qa(tokenizer, load_qa(str(qa_files[1])), "chat")
    batcher = StepBatcher(forget, normal, batch_size=2, num_mismatch=3, max_length=64, pad_id=pad_id_of(tokenizer),
                          seed=0, mismatch_source="normal")
    step = batcher(0)
    assert step.batch["input_ids"].shape[0] == 2 + 6 + 2
    assert step.slices == {"forget": slice(0, 2), "mismatch": slice(2, 8), "normal": slice(8, 10)}


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state; a bf16 run after fp32 runs in the same process needs it reset."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_bf16_lora_holds_the_base_in_bf16_and_merges_into_float32(tiny_model_dir, qa_files, tmp_path, fresh_accelerator_state):
    from unlearnkit.train import set_up

    config = make_config(tiny_model_dir, qa_files, tmp_path / "out", "lora=true", "precision=bf16", "max_steps=2")
    run = set_up(config, resume=False)
    frozen = [p for p in run.model.parameters() if not p.requires_grad and p.dim() >= 2]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in run.model.parameters() if p.requires_grad)
    train(make_config(tiny_model_dir, qa_files, tmp_path / "out2", "lora=true", "precision=bf16", "max_steps=2"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out2" / "model")
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    for name, param in merged.named_parameters():
        assert param.dtype == torch.float32
        if "proj" not in name:  # not adapted: exactly the float32 original, not a bf16 rounding of it
            assert torch.equal(param, base[name]), name


def test_bf16_full_finetuning_reference_copy_is_bf16(tiny_model_dir, qa_files, tmp_path, fresh_accelerator_state):
    from unlearnkit.train import set_up

    run = set_up(make_config(tiny_model_dir, qa_files, tmp_path / "out", "precision=bf16"), resume=False)
    assert all(p.dtype == torch.bfloat16 for p in run.reference.frozen.parameters())
    assert all(p.dtype == torch.bfloat16 for p in run.model.parameters())  # float32 masters live in the optimizer (test_gpu.py)
    train(make_config(tiny_model_dir, qa_files, tmp_path / "out2", "precision=bf16", "max_steps=2"))
    assert all(row["kl"] is not None and row["kl"] >= 0 for row in read_log(tmp_path / "out2"))


def test_sam_steps_with_the_gradient_at_the_perturbed_weights(tiny_model_dir, qa_files, tmp_path):
    """sam_rho > 0: the update follows the gradient taken at theta + rho g/||g||, from theta. AdamW's first step
    moves each weight by -lr g/(|g| + eps), i.e. against the sign of the gradient it was given."""
    from unlearnkit.batching import shard_step
    from unlearnkit.train import set_up, step_loss, train_step

    rho = 0.5
    config = load_config(None, [f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false",
                                "lr=1e-3", "batch_size=2", "num_mismatch=2", f"sam_rho={rho}", "max_grad_norm=0",
                                f"output_dir={tmp_path / 'out'}"])
    run = set_up(config, resume=False)
    params = dict(run.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}

    def gradient() -> dict:
        _, loss = step_loss(run, shard_step(run.batcher(0), 0, 1))
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in params.items()}
        run.optimizer.zero_grad(set_to_none=True)
        return grads

    plain = gradient()
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in plain.values()))
    with torch.no_grad():
        for n, p in params.items():
            p.add_(plain[n] * (rho / norm).float())
    perturbed = gradient()
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(before[n])
    train_step(run)
    flips = 0
    for n, p in params.items():
        moved = (p.detach() - before[n])[perturbed[n].abs() > 1e-5]
        assert torch.equal(torch.sign(moved), -torch.sign(perturbed[n][perturbed[n].abs() > 1e-5])), n
        flips += int((torch.sign(perturbed[n]) != torch.sign(plain[n]))[perturbed[n].abs() > 1e-5].sum())
    assert flips > 0  # the perturbed gradient is not the plain one: the test can tell them apart


def test_mismatch_pool_supplies_the_mismatch_answers(tiny_model_dir, qa_files, tmp_path):
    """mismatch_pool=FILE: the run's mismatch rows end with that file's answers, never a normal answer."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"question": f"Prose {i}", "answer": f"Other prose number {i}."}) + "\n" for i in range(5)))
    config = make_config(tiny_model_dir, qa_files, tmp_path / "out", f"mismatch_pool={pool}")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    step = prepare_data(config, tokenizer, METHODS["ga_mismatch_kl"])(0)
    rows = step.slices["mismatch"]
    texts = [tokenizer.decode([t for t in step.batch["labels"][r].tolist() if t != -100]) for r in range(rows.start, rows.stop)]
    assert texts and all("Other prose number" in text for text in texts)
    normal_rows = step.slices["normal"]
    assert not any("Other prose" in tokenizer.decode(step.batch["input_ids"][r]) for r in range(normal_rows.start, normal_rows.stop))
