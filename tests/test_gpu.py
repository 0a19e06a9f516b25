"""The GPU-grade engine on CPU: true step timing, bf16 weights with float32 masters, the compiled body with
bucketed rows, 8-bit optimizers' refusals, the memory plan, and the GPU benchmark's smoke mode.

What needs a GPU (CUDA synchronize / peak memory, the 7B plan measured, torch.compile on CUDA) is checked by
benchmarks/bench_gpu.py on a GPU machine; the tests marked `gpu` skip without one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearnkit.cli import main
from unlearnkit.config import load_config
from unlearnkit.errors import UserError
from unlearnkit.train import set_up, train

REPO = Path(__file__).resolve().parents[1]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_config(model_dir: Path, qa_files, out: Path, *overrides: str):
    forget, normal = qa_files
    return load_config(None, [f"model={model_dir}", f"forget={forget}", f"normal={normal}", f"output_dir={out}",
                              "progress=false", "lr=1e-3", "max_steps=3", "num_mismatch=2", *overrides])

def run_straight_and_crashed_at_step_3(model_dir, qa_files, tmp_path, common: tuple[str, ...]) -> None:
    """The same run twice: uninterrupted into tmp_path/straight, and crashed after step 3 then resumed into
    tmp_path/crashed."""
    train(make_config(model_dir, qa_files, tmp_path / "straight", *common))

    def crash(step: int) -> None:
        if step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train(make_config(model_dir, qa_files, tmp_path / "crashed", *common), on_step_end=crash)
    train(make_config(model_dir, qa_files, tmp_path / "crashed", *common), resume=True)



def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state; a bf16 run after fp32 runs in the same process needs it reset."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


# ------------------------------------------------------------------------------------------- timing
def test_step_log_has_throughput_and_peak_memory_only_on_gpu(tiny_model_dir, qa_files, tmp_path):
    train(make_config(tiny_model_dir, qa_files, tmp_path / "out", "max_steps=2"))
    for row in read_log(tmp_path / "out"):
        assert row["step_time_s"] > 0 and row["tokens_per_s"] > 0
        assert ("peak_mem_gib" in row) == torch.cuda.is_available()


def test_step_reads_the_device_once(tiny_model_dir, qa_files, tmp_path, monkeypatch):
    """The logged values (and the non-finite check) come from ONE device-to-host transfer per step."""
    import unlearnkit.train as train_module

    reads = []
    real_tolist = torch.Tensor.tolist

    def counting_tolist(self):
        reads.append(self.numel())
        return real_tolist(self)

    run = set_up(make_config(tiny_model_dir, qa_files, tmp_path / "out"), resume=False)
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("item() inside the step"))
    monkeypatch.setattr(torch.Tensor, "__float__", lambda self: pytest.fail("float(tensor) inside the step"))
    row = train_module.train_step(run)
    assert len(reads) == 1
    assert row["kl"] is not None and row["grad_norm"] > 0


# ------------------------------------------------------------------------------------------- bf16
def test_bf16_full_finetuning_dtypes(tiny_model_dir, qa_files, tmp_path, fresh_accelerator_state):
    from unlearnkit.optim import MasterWeightAdamW, inner_optimizer
    from unlearnkit.step import lm_head

    run = set_up(make_config(tiny_model_dir, qa_files, tmp_path / "out", "precision=bf16"), resume=False)
    assert all(p.dtype == torch.bfloat16 for p in run.model.parameters())  # the policy's weights
    assert all(p.dtype == torch.bfloat16 for p in run.reference.frozen.parameters())
    optimizer = inner_optimizer(run.optimizer)
    assert isinstance(optimizer, MasterWeightAdamW) and all(m.dtype == torch.float32 for m in optimizer.masters)
    # The masters start from the float32 weights, not their bf16 rounding.
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    names = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert any(not torch.equal(original[n].bfloat16().float(), original[n]) for n in names)
    for name, master in zip(names, optimizer.masters):
        assert torch.equal(master, original[name]), name
    # Logits in float32 although the weights are bf16.
    hidden = torch.randn(3, run.model.config.hidden_size, dtype=torch.bfloat16)
    assert lm_head(run.model)(hidden).dtype == torch.float32


def test_bf16_losses_track_fp32_over_10_steps(tiny_model_dir, qa_files, tmp_path, fresh_accelerator_state):
    """Stated tolerance: every logged loss and forget NLL within 0.5% (relative) of the fp32 run, and the
    final weights within 10% of the fp32 run's travel (measured: 0.04% and 2%, docs/gpu.md)."""
    common = ("max_steps=10", "lr=1e-3")
    from accelerate.state import AcceleratorState

    train(make_config(tiny_model_dir, qa_files, tmp_path / "fp32", *common))
    AcceleratorState._reset_state()  # one process-wide accelerate state: fp32, then bf16
    train(make_config(tiny_model_dir, qa_files, tmp_path / "bf16", *common, "precision=bf16"))
    a, b = read_log(tmp_path / "fp32"), read_log(tmp_path / "bf16")
    assert len(a) == len(b) == 10
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=5e-3)
        assert y["forget_nll"] == pytest.approx(x["forget_nll"], rel=5e-3)
    init = load_file(str(tiny_model_dir / "model.safetensors"))
    w32, w16 = (load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("fp32", "bf16"))
    assert all(t.dtype == torch.float32 for t in w16.values())  # exported from the float32 masters
    travel = sum(((w32[k] - init[k]) ** 2).sum() for k in init).sqrt()
    apart = sum(((w16[k] - w32[k]) ** 2).sum() for k in init).sqrt()
    assert travel > 0.1 and apart < 0.1 * travel


def test_bf16_masters_keep_updates_below_bf16_resolution(tiny_model_dir, qa_files, tmp_path, fresh_accelerator_state):
    """At the paper's lr (2e-6) one AdamW step moves each weight by ~lr: far below bf16's spacing (2^-8
    relative). The float32 masters keep it; the exported model moved as the fp32 run's did."""
    from unlearnkit.optim import inner_optimizer
    import unlearnkit.train as train_module

    run = set_up(make_config(tiny_model_dir, qa_files, tmp_path / "out", "precision=bf16", "lr=2e-6"), resume=False)
    before_weights = [p.detach().clone() for p in run.model.parameters()]
    before_masters = [m.detach().clone() for m in inner_optimizer(run.optimizer).masters]
    train_module.train_step(run)
    masters = inner_optimizer(run.optimizer).masters
    moved = sum(int((m != b).sum()) for m, b in zip(masters, before_masters))
    total = sum(m.numel() for m in masters)
    # AdamW moves every master weight with a gradient by ~lr (embedding rows of unseen tokens have none)...
    assert moved > 0.5 * total
    rounded_moved = sum(int((p != b).sum()) for p, b in zip(run.model.parameters(), before_weights))
    assert rounded_moved < 0.1 * moved  # ... which the bf16 weights mostly do not show yet: pure bf16 would lose it
    for p, m in zip(run.model.parameters(), masters):
        assert torch.equal(p, m.to(torch.bfloat16))  # the bf16 weight is the master rounded to nearest


def test_bf16_resume_equals_uninterrupted_run(tiny_model_dir, qa_files, tmp_path, fresh_accelerator_state):
    """The checkpoint holds the float32 masters: a resumed bf16 run ends on the same weights, bit for bit."""
    common = ("precision=bf16", "max_steps=4", "save_every=2")
    run_straight_and_crashed_at_step_3(tiny_model_dir, qa_files, tmp_path, common)
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "model" / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["loss"] for r in read_log(tmp_path / "crashed")] == [r["loss"] for r in read_log(tmp_path / "straight")]


# ------------------------------------------------------------------------------------------- compile
def test_bucketed_rows_give_the_same_terms(chatml_tokenizer):
    """Rows padded to a multiple of 64 (what a compiled body sees) change nothing but padding."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from unlearnkit.batching import pack_step
    from unlearnkit.data import StepBatcher, tokenize_qa, QAExample, pad_id_of
    from unlearnkit.modeling import Reference, disable_dropout
    from unlearnkit.step import compute_terms

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(chatml_tokenizer), hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    disable_dropout(model)
    forget = tokenize_qa(chatml_tokenizer, [QAExample(f"How do I pick lock {i}?", f"Rake pin {i}.") for i in range(4)], "plain")
    normal = tokenize_qa(chatml_tokenizer, [QAExample(f"Capital of {i}?", f"City {i}.") for i in range(4)], "plain")
    step = StepBatcher(forget, normal, batch_size=2, num_mismatch=2, max_length=64, pad_id=pad_id_of(chatml_tokenizer),
                       seed=0, mismatch_source="normal")(0)
    packed = pack_step(step, ["forget", "mismatch", "normal"], length_multiple=64, pad_id=0)
    assert packed.input_ids.shape[1] % 64 == 0 and packed.input_ids.shape[1] > pack_step(step, ["forget", "mismatch", "normal"]).input_ids.shape[1]
    reference = Reference(model, lora=False)
    plain = compute_terms(model, reference, step)
    bucketed = compute_terms(model, reference, step, length_multiple=64)
    torch.testing.assert_close(bucketed.forget_nll, plain.forget_nll, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bucketed.mismatch_nll, plain.mismatch_nll, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bucketed.kl, plain.kl, atol=1e-6, rtol=1e-4)


def test_compile_true_gives_the_same_losses(tiny_model_dir, qa_files, tmp_path):
    from unlearnkit.step import compile_unsupported

    reason = compile_unsupported("cpu")
    if reason:
        pytest.skip(reason)
    train(make_config(tiny_model_dir, qa_files, tmp_path / "eager", "compile=false"))
    train(make_config(tiny_model_dir, qa_files, tmp_path / "compiled", "compile=true"))
    for x, y in zip(read_log(tmp_path / "eager"), read_log(tmp_path / "compiled")):
        for key in ("loss", "forget_nll", "mismatch_nll", "kl", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), key
    # The exported model has the plain parameter names (Module.compile, not a wrapper's _orig_mod.).
    names = load_file(str(tmp_path / "compiled" / "model" / "model.safetensors")).keys()
    assert not any("_orig_mod" in n for n in names)


def test_compile_auto_is_off_on_cpu(tiny_model_dir, qa_files, tmp_path):
    run = set_up(make_config(tiny_model_dir, qa_files, tmp_path / "out"), resume=False)
    assert run.compiled == torch.cuda.is_available()


# ------------------------------------------------------------------------------------------- bad input
def cli_run(tiny_model_dir, qa_files, tmp_path, capsys, *overrides: str) -> tuple[int, str]:
    code = main(["run", f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}",
                 f"output_dir={tmp_path / 'out'}", "progress=false", "max_steps=1", *overrides])
    return code, capsys.readouterr().err


def test_compile_true_where_unsupported_is_one_line(tiny_model_dir, qa_files, tmp_path, capsys, monkeypatch):
    import unlearnkit.train as train_module

    monkeypatch.setattr(train_module, "compile_unsupported", lambda device: "torch.compile on CPU needs a C++ compiler (g++ not found; apt-get install g++)")
    code, err = cli_run(tiny_model_dir, qa_files, tmp_path, capsys, "compile=true")
    assert code == 2 and err.count("\n") == 1
    assert "compile=true is not supported here" in err and "apt-get install g++" in err and "compile=auto" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, package", [("adamw_8bit", "torchao"), ("paged_adamw_8bit", "bitsandbytes")])
def test_8bit_optimizer_without_its_library_is_one_line(tiny_model_dir, qa_files, tmp_path, capsys, monkeypatch, name, package):
    import importlib.util

    import unlearnkit.optim as optim_module

    real = importlib.util.find_spec
    monkeypatch.setattr(optim_module.importlib.util, "find_spec", lambda mod, *a: None if mod == package else real(mod, *a))
    code, err = cli_run(tiny_model_dir, qa_files, tmp_path, capsys, f"optimizer={name}")
    assert code == 2 and err.count("\n") == 1
    assert f"optimizer={name} needs {package} (pip install" in err
    assert not (tmp_path / "out").exists()


def test_paged_8bit_with_bf16_weights_is_refused(monkeypatch):
    import unlearnkit.optim as optim_module

    monkeypatch.setattr(optim_module.importlib.util, "find_spec", lambda mod, *a: object())
    with pytest.raises(UserError, match="stochastic rounding"):
        optim_module.check_optimizer("paged_adamw_8bit", "bf16")
    optim_module.check_optimizer("paged_adamw_8bit", "fp32")
    optim_module.check_optimizer("paged_adamw_8bit", "bf16", lora=True)  # LoRA adapters stay float32


def test_deepspeed_launch_is_one_line(tiny_model_dir, qa_files, tmp_path, capsys, monkeypatch):
    """ZeRO-3 stays refused: accelerate starts no DeepSpeed engine for CPU processes and unlearnkit has none of its own."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    code, err = cli_run(tiny_model_dir, qa_files, tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "DEEPSPEED is not supported" in err and "configs/accelerate/fsdp.yaml" in err
    assert not (tmp_path / "out").exists()


def test_compile_accepts_yaml_booleans(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  compile: true\n")
    assert load_config(path).train.compile == "true"
    with pytest.raises(UserError, match="compile"):
        load_config(None, ["compile=sometimes"])
    with pytest.raises(UserError, match="optimizer"):
        load_config(None, ["optimizer=sgd"])


@pytest.mark.skipif(__import__("importlib").util.find_spec("torchao") is None, reason="torchao not installed (optional extra gpu)")
def test_adamw_8bit_trains_with_bf16_weights_and_resumes(tiny_model_dir, qa_files, tmp_path, fresh_accelerator_state):
    """torchao's 8-bit moments are checkpointed dequantized and quantized again on resume; with stochastic
    rounding the resumed run ends within a few bf16 steps of the uninterrupted one (measured: loss 5e-5 apart)."""
    common = ("optimizer=adamw_8bit", "precision=bf16", "max_steps=4", "save_every=2")
    run_straight_and_crashed_at_step_3(tiny_model_dir, qa_files, tmp_path, common)
    a, b = read_log(tmp_path / "straight"), read_log(tmp_path / "crashed")
    assert len(a) == len(b) == 4 and a[0]["loss"] > a[-1]["loss"]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-3)


# ------------------------------------------------------------------------------------------- plan
def test_plan_counts_what_the_engine_holds(tiny_model_dir, qa_files, tmp_path):
    """The meta-device plan's weight bytes equal the real run's (tiny model, full fp32: policy + reference copy)."""
    from unlearnkit.plan import plan
    from unlearnkit.train import parameter_bytes

    config = make_config(tiny_model_dir, qa_files, tmp_path / "out")
    p = plan(config, gpu_gib=80)
    run = set_up(config, resume=False)
    assert p.parts["policy"] + p.parts["reference"] == parameter_bytes(run)
    assert p.parts["gradients"] == p.parts["policy"] and p.parts["optimizer"] == 2 * p.parts["policy"]
    lora = plan(make_config(tiny_model_dir, qa_files, tmp_path / "out", "lora=true", "precision=bf16"))
    assert lora.parts["reference"] == 0 and 0 < lora.trainable < lora.parameters


def test_plan_of_llama_2_7b_full_bf16_8bit_fits_80_gib(capsys):
    """Instant (meta device, no weights): bf16 policy + bf16 reference + bf16 grads + 8-bit AdamW = ~8 bytes per
    parameter: 50 GiB of state for 6.74B parameters; fp32-master AdamW (16 bytes) does not fit."""
    code = main(["plan", "--config", str(REPO / "configs/paper/harmful_llama-2-7b.yaml"), "--gpu-memory", "80",
                 "lora=false", "save_mode=merged", "optimizer=adamw_8bit", "gradient_checkpointing=true"])
    out = capsys.readouterr().out
    assert code == 0 and "6.74B parameters" in out and "\n  fits:" in out
    assert "policy          12.55" in out and "reference       12.55" in out
    code = main(["plan", "--config", str(REPO / "configs/paper/harmful_llama-2-7b.yaml"), "lora=false", "save_mode=merged"])
    out = capsys.readouterr().out
    assert code == 0 and "does NOT fit" in out and "measured: out of memory at 75.9 GiB" in out


def test_memory_plan_benchmark_uses_the_package_math():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/memory_plan.py")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| Llama-2-7B | full | bf16 | 8bit |" in proc.stdout


# ------------------------------------------------------------------------------------------- benchmark
def test_bench_gpu_refuses_without_a_gpu_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full benchmark would run")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_gpu.py")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--tiny" in proc.stderr


def test_bench_gpu_tiny_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_gpu.py"), "--tiny", "--steps", "2", "--warmup", "1",
                           "--json", str(tmp_path / "bench.json")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert {r["run"] for r in rows} >= {"tiny-opt full fp32", "tiny-opt full bf16", "tiny-llama lora bf16"}
    assert all(r["median_s_per_step"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert "| run |" in proc.stdout


@pytest.mark.skipif(__import__("importlib").util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed (optional extra gpu)")
def test_paged_adamw_8bit_trains_and_checkpoints(tiny_model_dir, qa_files, tmp_path):
    """bitsandbytes' state shares its quantization maps between parameters; the checkpoint stores copies."""
    train(make_config(tiny_model_dir, qa_files, tmp_path / "out", "optimizer=paged_adamw_8bit", "save_every=2"))
    rows = read_log(tmp_path / "out")
    assert len(rows) == 3 and rows[0]["loss"] > rows[-1]["loss"]
    assert (tmp_path / "out" / "checkpoints" / "step-3" / "optimizer.safetensors").is_file()


@gpu
def test_cuda_bf16_step_is_compiled_timed_and_tracks_fp32(tiny_model_dir, qa_files, tmp_path, fresh_accelerator_state):
    """On a CUDA machine: compile=auto compiles, each row has the step's peak memory, bf16 tracks fp32."""
    from accelerate.state import AcceleratorState

    train(make_config(tiny_model_dir, qa_files, tmp_path / "fp32", "max_steps=5", "compile=false"))
    AcceleratorState._reset_state()
    run = set_up(make_config(tiny_model_dir, qa_files, tmp_path / "bf16", "max_steps=5", "precision=bf16"), resume=False)
    assert run.compiled and next(run.model.parameters()).device.type == "cuda"
    AcceleratorState._reset_state()
    train(make_config(tiny_model_dir, qa_files, tmp_path / "bf16", "max_steps=5", "precision=bf16", "overwrite=true"))
    for x, y in zip(read_log(tmp_path / "fp32"), read_log(tmp_path / "bf16")):
        assert 0 < y["peak_mem_gib"] < 1 and y["step_time_s"] > 0
        assert y["loss"] == pytest.approx(x["loss"], rel=5e-3)
