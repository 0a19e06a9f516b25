"""The `unlearnkit` command: smoke runs on tiny models and one-line errors for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from unlearnkit.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_smoke_on_tiny_llama_style_model(tiny_llama_dir, qa_files, tmp_path, capsys):
    """Llama-style tokenizer: BOS added, no pad token."""
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "run", "--config", str(REPO / "configs" / "smoke.yaml"), f"model={tiny_llama_dir}",
                              f"forget={qa_files[0]}", f"normal={qa_files[1]}", f"output_dir={out}", "max_steps=2",
                              "template=paper", "progress=false", "num_mismatch=2")
    assert code == 0, stdout
    assert "unlearned for 2 steps" in stdout
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"step", "forget_nll", "mismatch_nll", "kl", "loss"} <= rows[0].keys()
    assert (out / "model" / "config.json").is_file() and (out / "config.yaml").is_file()
    assert (out / "checkpoints").is_dir()


def test_methods_and_help_list_every_field(capsys):
    assert run_cli(capsys, "methods")[0] == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for key in ("output_dir", "max_steps", "save_every", "lora", "forget", "normal", "lr", "batch_size",
                "num_mismatch", "template", "precision", "forget_threshold", "continue_factor", "w_forget"):
        assert f"  {key} " in text, key


def _bad_input_cases(tmp_path: Path, tiny_model_dir: Path, qa_files) -> dict[str, tuple[list[str], str]]:
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": \n')
    no_column = tmp_path / "nocol.jsonl"
    no_column.write_text('{"prompt": "q", "answer": "a"}\n')
    empty_answer = tmp_path / "empty.jsonl"
    empty_answer.write_text('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": "  "}\n')
    null_question = tmp_path / "nullq.jsonl"
    null_question.write_text('{"question": "q", "answer": "a"}\n{"question": null, "answer": "a2"}\n')
    number_answer = tmp_path / "numa.json"
    number_answer.write_text('[{"question": "q", "answer": "a"}, {"question": "q2", "answer": "a2"}, {"question": "q3", "answer": 42}]')
    list_question = tmp_path / "listq.jsonl"
    list_question.write_text('{"question": ["q"], "answer": "a"}\n')
    null_normal_answer = tmp_path / "nulla.jsonl"
    null_normal_answer.write_text('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": "b"}\n{"question": "q3", "answer": null}\n')
    return {
        "missing file": ([f"forget={tmp_path / 'nope.jsonl'}"], "not found"),
        "malformed jsonl": ([f"forget={malformed}"], "line 2"),
        "missing column": ([f"forget={no_column}"], "no column 'question'"),
        "empty answer": ([f"forget={empty_answer}"], "row 2 has an empty answer"),
        "null question": ([f"forget={null_question}"], f"{null_question}: row 2, column 'question' is null, not text"),
        "number answer": ([f"forget={number_answer}"], f"{number_answer}: row 3, column 'answer' is a number (42), not text"),
        "list question": ([f"forget={list_question}"], f"{list_question}: row 1, column 'question' is a list, not text"),
        "null normal answer": ([f"normal={null_normal_answer}"], f"{null_normal_answer}: row 3, column 'answer' is null"),
        "unknown hub model": (["model=nosuch-owner/nosuch-model"],
                              "model 'nosuch-owner/nosuch-model' not found locally and the hub is unreachable: "
                              "pass a local folder or check the name"),
        "unknown hub dataset": (["forget=nosuch-owner/nosuch-data"],
                                "dataset 'nosuch-owner/nosuch-data' not found locally and the hub is unreachable"),
        "unknown hf: dataset": (["normal=hf:nosuch-owner/nosuch-data"],
                                "dataset 'nosuch-owner/nosuch-data' not found locally and the hub is unreachable"),
        "unknown method": (["method=forgetti"], "unknown method 'forgetti'"),
        "unknown model": ([f"model={tmp_path / 'no-such-model'}"], f"model folder '{tmp_path / 'no-such-model'}' not found"),
        "unknown key": (["learning_rate=1"], "unknown config key 'learning_rate'"),
        "bad type": (["max_steps=ten"], "max_steps"),
        "overwrite input model": ([f"output_dir={tiny_model_dir}"], "would overwrite the input model"),
    }


@pytest.mark.parametrize("case", ["missing file", "malformed jsonl", "missing column", "empty answer", "null question",
                                  "number answer", "list question", "null normal answer", "unknown method",
                                  "unknown model", "unknown hub model", "unknown hub dataset", "unknown hf: dataset",
                                  "unknown key", "bad type", "overwrite input model"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tiny_model_dir, qa_files, tmp_path, capsys, monkeypatch):
    # The hub as this machine sees it (no network), also where it has one: the answer must not depend on it.
    monkeypatch.setattr("unlearnkit.hub.hub_reachable", lambda: False)
    overrides, expected = _bad_input_cases(tmp_path, tiny_model_dir, qa_files)[case]
    out = tmp_path / "out"
    argv = ["run", f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", f"output_dir={out}",
            "max_steps=1", "progress=false", *overrides]
    digest_before = sorted(p.name for p in tiny_model_dir.iterdir())
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unlearnkit: error:") and expected in lines[0], err
    assert not out.exists()
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == digest_before


def test_non_empty_output_dir_needs_resume_or_overwrite(tiny_model_dir, qa_files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, err = run_cli(capsys, "run", f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}",
                           f"output_dir={out}", "max_steps=1", "progress=false")
    assert code == 2 and "not empty" in err
    assert (out / "keep.txt").read_text() == "precious"


def test_resume_with_changed_config_is_refused(tiny_model_dir, qa_files, tmp_path, capsys):
    base = ["run", f"model={tiny_model_dir}", f"forget={qa_files[0]}", f"normal={qa_files[1]}", f"output_dir={tmp_path / 'o'}",
            "max_steps=2", "progress=false", "num_mismatch=2"]
    assert run_cli(capsys, *base)[0] == 0
    code, _, err = run_cli(capsys, *base, "lr=0.5", "--resume")
    assert code == 2 and "train.lr" in err


def test_console_script_exit_status_without_traceback(tmp_path):
    """The real process: exit status 2 and no traceback on stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "run", "method=nope"], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("unlearnkit: error:")


@pytest.mark.parametrize("argv, expected", [
    (["run", "model=nosuch-owner/nosuch-model"], "model 'nosuch-owner/nosuch-model' not found locally and the hub is unreachable"),
    (["run", "forget=nosuch-owner/nosuch-data"], "dataset 'nosuch-owner/nosuch-data' not found locally and the hub is unreachable"),
])
def test_unknown_hub_name_offline_is_one_line_in_a_real_process(argv, expected, tmp_path):
    """The real process in offline mode: one stderr line (no retry warnings, no traceback), exit 2, nothing written."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "unlearnkit.cli", *argv, f"output_dir={tmp_path / 'out'}", "max_steps=1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("row, expected", [
    ('{"prompt": null, "response": "r"}', "row 2, column 'prompt' is null, not text"),
    ('{"prompt": "p", "response": 3.5}', "row 2, column 'response' is a number (3.5), not text"),
])
def test_judge_input_with_a_null_or_number_is_one_line(row, expected, tmp_path, capsys):
    source = tmp_path / "pairs.jsonl"
    source.write_text('{"prompt": "p1", "response": "r1"}\n' + row + "\n")
    code, _, err = run_cli(capsys, "judge", "--input", str(source), "--output", str(tmp_path / "out.jsonl"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"{source}: {expected}" in err, err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.slow
def test_smoke_config_unlearns_the_builtin_model(tmp_path, capsys):
    """configs/smoke.yaml end to end: builtin SmolLM2-135M, builtin harmful + TruthfulQA data (CPU, ~1 min)."""
    out = tmp_path / "smoke"
    code, stdout, err = run_cli(capsys, "run", "--config", str(REPO / "configs" / "smoke.yaml"), f"output_dir={out}",
                                "max_steps=2", "save_every=1", "progress=false")
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["kl"] is not None and r["mismatch_nll"] is not None for r in rows)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "model").config.model_type == "llama"


def test_a_worker_rank_leaves_without_finalization_and_keeps_its_exit_status(monkeypatch):
    """A non-main rank of a multi-process run ends through os._exit with the command's own status (an
    interpreter finalization with gloo threads alive can abort it after a good run); a plain process returns."""
    import torch.distributed as dist

    import unlearnkit.cli as cli

    left: list[int] = []
    monkeypatch.setattr(cli, "_leave_now", left.append)
    assert main(["methods"]) == 0 and left == []  # one process: no process group, a normal return
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert main(["methods"]) == 0 and left == [0]
    assert main(["run", "lr=-1"]) == 2 and left == [0, 2]  # a bad-input exit keeps its status
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    assert main(["methods"]) == 0 and left == [0, 2]  # the main rank finishes its own way
