"""Graceful faults: signals checkpoint and exit non-zero, non-finite steps stop cleanly, a time-budget
stop resumes, checkpoints never unpickle, bad input files and unwritable/full output folders end in one line."""

from __future__ import annotations

import dataclasses

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, SLOW_CLI
from unlearnkit.cli import main
from unlearnkit.config import load_config
from unlearnkit.errors import TrainingDiverged, UserError
from unlearnkit.methods import METHODS, Method
from unlearnkit.train import train



def common(model_dir: Path, qa_files, *extra: str) -> list[str]:
    return [f"model={model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", "progress=false", "lr=1e-2",
            "num_mismatch=2", *extra]


def log_steps(out: Path) -> list[int]:
    path = out / "train_log.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def one_error_line(err: str) -> str:
    """The single 'unlearnkit: error:' line of stderr (progress bars of model loading may precede it), no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("unlearnkit:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    return errors[0]


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("signum, lora", [(signal.SIGTERM, "false"), (signal.SIGINT, "true")])
def test_signal_checkpoints_exits_128_plus_signal_and_resume_equals_uninterrupted(tiny_model_dir, qa_files, tmp_path, signum, lora):
    args = common(tiny_model_dir, qa_files, "max_steps=12", "save_every=0", f"lora={lora}")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(load_config(None, [*args, f"output_dir={straight}"]))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, "run", *args, f"output_dir={stopped}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(log_steps(stopped)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    line = one_error_line(err)
    assert line.startswith(f"unlearnkit: error: {signal.Signals(signum).name} received: stopped after step") and "--resume" in line
    done = log_steps(stopped)
    assert 2 <= len(done) < 12 and done == list(range(1, len(done) + 1))
    assert (stopped / "checkpoints" / f"step-{done[-1]}" / "state.json").is_file()
    assert not (stopped / "model").exists()  # no partial model
    train(load_config(None, [*args, f"output_dir={stopped}"]), resume=True)
    assert log_steps(stopped) == list(range(1, 13))
    assert_same_weights(straight / "model", stopped / "model")


def test_checkpoint_holds_no_pickle(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "out"
    train(load_config(None, common(tiny_model_dir, qa_files, "max_steps=2", f"output_dir={out}")))
    files = sorted(p.name for p in (out / "checkpoints" / "step-2").iterdir())
    assert files == ["optimizer.json", "optimizer.safetensors", "state.json", "trainable.safetensors"]


def _diverging(after_steps: int) -> Method:
    calls = {"n": 0}
    base = METHODS["ga"]

    def combine(terms, config):
        calls["n"] += 1
        loss = base.combine(terms, config)
        return loss * float("nan") if calls["n"] > after_steps else loss

    return dataclasses.replace(base, combine=combine)


def test_non_finite_loss_stops_keeps_last_good_checkpoint_and_writes_no_model(tiny_model_dir, qa_files, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "ga", _diverging(after_steps=2))
    out = tmp_path / "out"
    config = load_config(None, common(tiny_model_dir, qa_files, "method=ga", "max_steps=5", "save_every=1", f"output_dir={out}"))
    with pytest.raises(TrainingDiverged) as caught:
        train(config)
    message = str(caught.value)
    assert "step 3" in message and "not finite" in message and "lower lr" in message and "\n" not in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert not (out / "model").exists() and not (out / "run_info.json").exists()
    assert log_steps(out) == [1, 2]


class _NanGradient(torch.autograd.Function):
    """Identity forward (a finite loss), NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_non_finite_gradient_with_finite_loss_stops_too(tiny_model_dir, qa_files, tmp_path, monkeypatch):
    base = METHODS["ga"]
    monkeypatch.setitem(METHODS, "ga", dataclasses.replace(base, combine=lambda t, c: _NanGradient.apply(base.combine(t, c))))
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged) as caught:
        train(load_config(None, common(tiny_model_dir, qa_files, "method=ga", "max_steps=3", f"output_dir={out}")))
    assert "step 1" in str(caught.value) and "gradient norm nan" in str(caught.value)
    assert not (out / "model").exists() and log_steps(out) == []


def test_non_finite_loss_exits_3_with_one_line(tiny_model_dir, qa_files, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(METHODS, "ga", _diverging(after_steps=0))
    code = main(["run", *common(tiny_model_dir, qa_files, "method=ga", "max_steps=3", f"output_dir={tmp_path / 'out'}")])
    err = one_error_line(capsys.readouterr().err)
    assert code == 3 and "step 1" in err


def test_time_budget_counts_per_invocation_and_resume_continues(tiny_model_dir, qa_files, tmp_path):
    args = common(tiny_model_dir, qa_files, "max_steps=5", "time_budget_s=1e-9", f"output_dir={tmp_path / 'out'}")
    first = train(load_config(None, args))
    assert first.steps == 1 and "time budget" in first.stop_reason
    second = train(load_config(None, args), resume=True)
    assert second.steps == 2 and "time budget" in second.stop_reason
    assert log_steps(tmp_path / "out") == [1, 2]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_undecodable_input_file_is_one_line_exit_2_nothing_written(tiny_model_dir, qa_files, tmp_path, capsys, suffix):
    binary = tmp_path / f"forget{suffix}"
    binary.write_bytes(bytes(range(256)) * 8)
    out = tmp_path / "out"
    code = main(["run", *common(tiny_model_dir, (binary, qa_files[1]), f"output_dir={out}")])
    err = one_error_line(capsys.readouterr().err)
    assert code == 2 and str(binary) in err and "UTF-8" in err, err
    assert not out.exists()


def test_output_dir_under_a_file_is_one_line_exit_2(tiny_model_dir, qa_files, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = main(["run", *common(tiny_model_dir, qa_files, f"output_dir={blocker / 'out'}")])
    err = one_error_line(capsys.readouterr().err)
    assert code == 2 and "not a folder" in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir_is_one_line_exit_2(tiny_model_dir, qa_files, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["run", *common(tiny_model_dir, qa_files, f"output_dir={locked / 'out'}")])
    finally:
        locked.chmod(0o700)
    assert code == 2 and "not writable" in capsys.readouterr().err


def test_full_disk_while_checkpointing_is_one_line_and_leaves_nothing_partial(tiny_model_dir, qa_files, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    real_save = safetensors.torch.save_file
    calls = {"n": 0}

    def save_until_full(tensors, filename, *a, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint (two files) fits; the next one does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real_save(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", save_until_full)
    out = tmp_path / "out"
    code = main(["run", *common(tiny_model_dir, qa_files, "max_steps=4", "save_every=2", f"output_dir={out}")])
    err = one_error_line(capsys.readouterr().err)
    assert code == 2 and "No space left on device" in err, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]  # no staging folder left behind
    assert not (out / "model").exists()
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)  # space freed: the run resumes and finishes
    assert main(["run", "--resume", *common(tiny_model_dir, qa_files, "max_steps=4", "save_every=2", f"output_dir={out}")]) == 0
    assert (out / "model" / "model.safetensors").is_file()
