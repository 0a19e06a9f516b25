"""Multi-process runs with `accelerate launch` on CPU (gloo): N processes x their share of the step
equal one process running the whole global batch, for full finetuning and LoRA, data-parallel (DDP) and
sharded (FSDP2, the shipped fsdp.yaml); checkpoints resume across process counts and engines."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, SLOW_CLI
from unlearnkit.batching import shard_step
from unlearnkit.config import load_config
from unlearnkit.data import StepBatch
from unlearnkit.train import train

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, args: list[str], *extra: str, config: str = "ddp.yaml") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    # A shipped config; on a machine without GPUs accelerate's multi-GPU launcher (torchrun) starts
    # the processes and unlearnkit's Accelerator joins them over gloo on CPU. (`accelerate launch --cpu
    # --num_processes 2` starts ONE process unless given an MPI hostfile.)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / "accelerate" / config),
               "--num_processes", str(num_processes), "--main_process_port", str(_free_port()),
               "-m", "unlearnkit", "run", *extra, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    """Log rows without the wall-clock columns (what an identical run still may not repeat)."""
    return [{k: v for k, v in row.items() if k not in ("step_time_s", "tokens_per_s")} for row in rows]


def test_shard_step_keeps_each_prompt_with_its_mismatch_answers():
    seqs = [([i], [i]) for i in range(2 + 4 + 2)]  # forget 0,1; mismatch 2..5 (K=2); normal 6,7
    step = StepBatch(seqs, {"forget": slice(0, 2), "mismatch": slice(2, 6), "normal": slice(6, 8)}, pad_id=0)
    shares = [shard_step(step, r, 2) for r in range(2)]
    assert [s.sequences for s in shares] == [[seqs[0], seqs[2], seqs[3], seqs[6]], [seqs[1], seqs[4], seqs[5], seqs[7]]]
    assert shares[1].slices == {"forget": slice(0, 1), "mismatch": slice(1, 3), "normal": slice(3, 4)}


@pytest.mark.parametrize("lora", ["false", "true"])
def test_two_process_run_equals_one_process_run(tiny_model_dir, qa_files, tmp_path, lora):
    args = [f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false", "lr=1e-3",
            "max_steps=3", "batch_size=4", "num_mismatch=2", f"lora={lora}", "save_every=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(None, [*args, f"output_dir={one}"]))
    proc = launch(2, [*args, f"output_dir={two}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_log(one), read_log(two)
    assert [r["step"] for r in b] == [1, 2, 3]
    # AdamW is blind to a uniform gradient scale; the gradient norm is not (a sum instead of a mean over processes).
    assert_close_loss_terms(a, b, ("loss", "forget_nll", "mismatch_nll", "kl", "grad_norm"))
    assert_same_up_to_summation_order(one, two, tiny_model_dir)
    assert json.loads((two / "run_info.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-2", "step-3"]


def test_global_batch_must_divide_over_processes(tiny_model_dir, qa_files, tmp_path):
    args = [f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false",
            "batch_size=3", f"output_dir={tmp_path / 'out'}"]
    proc = launch(2, args)
    assert proc.returncode != 0 and "batch_size=3" in proc.stderr and "Traceback" not in proc.stderr.split("batch_size=3")[0]


def test_two_process_resume_from_a_one_process_checkpoint(tiny_model_dir, qa_files, tmp_path):
    """A one-process run stopped on its time budget continues under `accelerate launch` with 2 processes."""
    args = [f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false", "lr=1e-3",
            "max_steps=3", "batch_size=4", "num_mismatch=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(load_config(None, [*args, f"output_dir={straight}"]))
    assert train(load_config(None, [*args, "time_budget_s=1e-9", f"output_dir={resumed}"])).steps == 1
    proc = launch(2, [*args, f"output_dir={resumed}"], "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_log(resumed)] == [1, 2, 3]
    assert_same_up_to_summation_order(straight, resumed, tiny_model_dir)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


# How far two runs of the same arithmetic summed in another order (one process vs a gradient all-reduced over
# two) may end apart. Each step's gradient then differs in its last bits (float32: ~1e-7 relative). For most
# weights Adam's update inherits that relative error; for a weight whose gradient is near zero, Adam divides by
# the gradient's own tiny running scale, so rounding noise can turn its update by up to lr a step, in either run.
# A bound on the largest single difference in absolute units (the old 1e-5) therefore depends on the CPU's
# summation order and on lr x steps: it failed at 1.2e-5 on another CPU. What does not depend on them:
# - the differences as a whole are rounding-sized against the distance the weights travelled: the L2 norm of
#   (a - b) is at most 1% of the L2 norm of (a - initial). Measured (tiny Llama, 3 steps, lr 1e-3, on an AMD
#   EPYC, OMP_NUM_THREADS 1 and 2): 0.005%. Faults it catches (same set-up, 1 process): half the batch 30%,
#   one step fewer 24%, the KL weight doubled 1.1%;
# - no single weight differs by more than Adam could move it apart in the steps taken: 2 x lr x steps.
ROUNDING_SHARE_OF_TRAVEL = 0.01
# Loss terms: float32 means and sums over at most ~100 tokens a term, each addition rounding at 2^-24
# relative: <= 100 x 6e-8 = 6e-6 of the value (plus the weights' own rounding drift at later steps).
LOSS_RTOL = 1e-5


def assert_same_up_to_summation_order(a_dir: Path, b_dir: Path, initial_dir: Path, lr: float = 1e-3, steps: int = 3) -> None:
    """``a_dir`` and ``b_dir`` computed the same run (``steps`` AdamW steps at ``lr``) with a different
    summation order (1 vs N processes): their exported weights agree within rounding, measured against the
    distance they travelled from ``initial_dir``'s (with LoRA the merged weights travelled by the adapter's product)."""
    wa, wb = _weights(a_dir), _weights(b_dir)
    assert wa.keys() == wb.keys()
    initial = load_file(str(initial_dir / "model.safetensors"))
    travel = math.sqrt(sum(float((wa[n] - initial[n]).double().pow(2).sum()) for n in wa))
    apart = math.sqrt(sum(float((wa[n] - wb[n]).double().pow(2).sum()) for n in wa))
    largest = max(float((wa[n] - wb[n]).abs().max()) for n in wa)
    assert travel > 0, "the weights did not move: nothing was compared"
    assert apart <= ROUNDING_SHARE_OF_TRAVEL * travel, (apart, travel, apart / travel)
    assert largest <= 2 * lr * steps, (largest, lr, steps)


def assert_identical_weights(a_dir: Path, b_dir: Path) -> None:
    """Bit-identical exported weights: what a resumed run promises against the same run uninterrupted."""
    wa, wb = _weights(a_dir), _weights(b_dir)
    assert wa.keys() == wb.keys()
    different = [n for n in wa if not torch.equal(wa[n], wb[n])]
    assert not different, (different[:3], max(float((wa[n] - wb[n]).abs().max()) for n in different))


def assert_close_loss_terms(a: list[dict], b: list[dict], keys: tuple[str, ...] = ("loss", "forget_nll", "mismatch_nll", "kl")) -> None:
    for row_a, row_b in zip(a, b):
        for key in keys:
            assert abs(row_a[key] - row_b[key]) <= LOSS_RTOL * max(1.0, abs(row_a[key])), (key, row_a[key], row_b[key])


def start_slow_launch(args: list[str], out: Path, tmp_path: Path, log_lines: int) -> tuple[subprocess.Popen, Path]:
    """A 2-process run of slowed-down steps (conftest.SLOW_CLI), returned once it has logged ``log_lines`` steps
    (or ended, or 180 s passed), with the folder where each process wrote its pid."""
    import time

    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "slow_rank.py"
    script.write_text(SLOW_CLI)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PID_DIR": str(pids)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / "accelerate" / "ddp.yaml"),
               "--num_processes", "2", "--main_process_port", str(_free_port()), str(script), "run", *args, f"output_dir={out}"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    log = out / "train_log.jsonl"
    while (not log.is_file() or len(log.read_text().splitlines()) < log_lines) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return proc, pids


def test_kill_9_of_one_process_then_resume_equals_uninterrupted(tiny_model_dir, qa_files, tmp_path):
    import signal

    args = [f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false", "lr=1e-3",
            "max_steps=8", "batch_size=4", "num_mismatch=2", "save_every=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # The same 2-process run uninterrupted: a resumed run promises the same bits, not only close ones.
    uninterrupted = launch(2, [*args, f"output_dir={straight}"])
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    proc, pids = start_slow_launch(args, killed, tmp_path, log_lines=3)
    os.kill(int((pids / "1").read_text()), signal.SIGKILL)
    proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert not (killed / "model").exists() and (killed / "checkpoints" / "step-2").is_dir()
    resumed = launch(2, [*args, f"output_dir={killed}"], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in read_log(killed)] == list(range(1, 9))
    assert without_timing(read_log(killed)) == without_timing(read_log(straight))
    assert_identical_weights(straight, killed)


def test_sigterm_to_the_launcher_checkpoints_every_process_at_the_same_step(tiny_model_dir, qa_files, tmp_path):
    """A cluster pre-empting the job signals the launcher; it forwards SIGTERM to every process, which
    agree (reduced flag) on the step to stop after; the main process writes that checkpoint."""
    import signal

    args = [f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false", "lr=1e-3",
            "max_steps=30", "batch_size=4", "num_mismatch=2", "save_every=0"]
    out = tmp_path / "out"
    proc, _ = start_slow_launch(args, out, tmp_path, log_lines=2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    steps = [r["step"] for r in read_log(out)]
    assert 2 <= len(steps) < 30 and (out / "checkpoints" / f"step-{steps[-1]}" / "state.json").is_file(), err[-3000:]
    assert err.count("SIGTERM received: stopped after step") >= 1 and not (out / "model").exists()


def _fsdp_on_cpu_missing() -> str:
    """Why this torch cannot run FSDP2 over gloo on CPU ('' when it can)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed with gloo is not available in this torch build"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as exc:
        return f"FSDP2 (torch.distributed.fsdp.fully_shard) cannot be imported: {exc}"
    return ""


needs_fsdp = pytest.mark.skipif(bool(_fsdp_on_cpu_missing()), reason=_fsdp_on_cpu_missing() or "FSDP2 on CPU available")


def launch_fsdp(args: list[str], *extra: str) -> subprocess.CompletedProcess:
    """A 2-process run under the shipped FSDP config (the GPU file as is: on CPU the processes join over gloo
    and unlearnkit shards the step with FSDP2 itself)."""
    return launch(2, args, *extra, config="fsdp.yaml")


@needs_fsdp
@pytest.mark.parametrize("lora", ["false", "true"])
def test_fsdp_two_process_run_equals_one_process_run(tiny_model_dir, qa_files, tmp_path, lora):
    """Sharded (FSDP2) over 2 processes = one process running the whole global batch; the checkpoint and the
    exported model are gathered whole. Full finetuning: the reference is a sharded frozen copy; LoRA: the
    adapter-disabled policy."""
    args = [f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false", "lr=1e-3",
            "max_steps=3", "batch_size=4", "num_mismatch=2", f"lora={lora}", "save_every=2", "save_mode=both" if lora == "true" else "save_mode=merged"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(None, [*args, f"output_dir={one}"]))
    proc = launch_fsdp([*args, f"output_dir={two}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    info_one, info_two = (json.loads((d / "run_info.json").read_text()) for d in (one, two))
    assert info_two["sharding"] == "fsdp"
    # Each process holds about half of the weights (policy and, for full finetuning, the reference copy).
    assert 0.4 < info_two["parameter_bytes_per_process"] / info_one["parameter_bytes_per_process"] < 0.6
    a, b = read_log(one), read_log(two)
    assert [r["step"] for r in b] == [1, 2, 3]
    assert_close_loss_terms(a, b, ("loss", "forget_nll", "mismatch_nll", "kl", "grad_norm"))
    assert_same_up_to_summation_order(one, two, tiny_model_dir)
    # The checkpoint holds whole tensors, as a one-process run writes them.
    ca, cb = (load_file(str(d / "checkpoints" / "step-3" / "trainable.safetensors")) for d in (one, two))
    assert {n: t.shape for n, t in ca.items()} == {n: t.shape for n, t in cb.items()}
    if lora == "true":
        wa, wb = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (one, two))
        # The adapter itself (B starts at zero: its travel is its value) agrees as closely as the merged weights.
        travel = math.sqrt(sum(float(t.double().pow(2).sum()) for n, t in wa.items() if "lora_B" in n))
        apart = math.sqrt(sum(float((wa[n] - wb[n]).double().pow(2).sum()) for n in wa))
        assert wa.keys() == wb.keys() and apart <= ROUNDING_SHARE_OF_TRAVEL * travel, (apart, travel)


@needs_fsdp
def test_fsdp_checkpoint_then_resume_equals_uninterrupted(tiny_model_dir, qa_files, tmp_path):
    """An FSDP run stopped after step 1 (its time budget) writes a gathered checkpoint; an FSDP --resume
    shards it back (weights and AdamW state) and ends bit for bit where the same FSDP run uninterrupted ends."""
    args = [f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false", "lr=1e-3",
            "max_steps=3", "batch_size=4", "num_mismatch=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    uninterrupted = launch_fsdp([*args, f"output_dir={straight}"])
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    first = launch_fsdp([*args, "time_budget_s=1e-9", f"output_dir={resumed}"])
    assert first.returncode == 0 and [r["step"] for r in read_log(resumed)] == [1], first.stderr[-3000:]
    proc = launch_fsdp([*args, f"output_dir={resumed}"], "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_log(resumed)] == [1, 2, 3]
    assert without_timing(read_log(resumed)) == without_timing(read_log(straight))
    assert_identical_weights(straight, resumed)


@pytest.mark.parametrize("env, expected", [
    ({"FSDP_VERSION": "1"}, "fsdp_version 1 is not supported"),
    ({"FSDP_VERSION": "2", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, "fsdp_cpu_ram_efficient_loading: true is not supported"),
    ({"FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "gradient_checkpointing=true"),
])
def test_fsdp_settings_unlearnkit_cannot_honour_are_refused(monkeypatch, env, expected):
    from unlearnkit.errors import UserError
    from unlearnkit.sharding import fsdp_settings

    for name in ("FSDP_VERSION", "FSDP_CPU_RAM_EFFICIENT_LOADING", "FSDP_ACTIVATION_CHECKPOINTING"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=expected):
        fsdp_settings()


def test_shipped_fsdp_config_passes_the_settings_check(monkeypatch):
    """configs/accelerate/fsdp.yaml as the launcher turns it into FSDP_* variables is accepted."""
    import yaml

    from unlearnkit.sharding import fsdp_settings

    fsdp = yaml.safe_load((REPO / "configs" / "accelerate" / "fsdp.yaml").read_text())["fsdp_config"]
    for key, value in fsdp.items():
        monkeypatch.setenv(key.upper(), str(value).lower())
    assert fsdp_settings().reshard_after_forward


@pytest.mark.parametrize("env, expected", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "distributed_type DEEPSPEED is not supported: use configs/accelerate/fsdp.yaml"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version 1 is not supported"),
])
def test_unsupported_sharded_launch_is_refused_before_anything_is_written(monkeypatch, tiny_model_dir, qa_files, tmp_path, env, expected):
    """What an `accelerate launch` with zero3.yaml (DeepSpeed installed) or an FSDP1 config sets: one line, no output folder."""
    from unlearnkit.errors import UserError

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=expected):
        train(load_config(None, [f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false",
                                 f"output_dir={out}"]))
    assert not out.exists()
