"""The utility guard: the selection rule on hand numbers, its set-up checks, and runs with guard_every=1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearnkit.config import load_config
from unlearnkit.errors import UserError
from unlearnkit.guard import GuardPoint, UtilityGuard, prepare_guard, select_step, shortfall, utility_holds
from unlearnkit.train import load_run_data, train
from unlearnkit.methods import METHODS


def points(*rows: tuple[int, float, float, float], min_similarity: float = 0.6, max_nm: float | None = None) -> list[GuardPoint]:
    return [GuardPoint(step, sim, nm, nll, utility_holds(sim, nm, min_similarity, max_nm)) for step, sim, nm, nll in rows]


# ------------------------------------------------------------------------------------------- the rule
SCRIPT = [  # step, similarity, NM, probe forget NLL
    (0, 1.0, 0.0, 1.0),
    (5, 0.80, 0.0, 2.0),
    (10, 0.70, 0.0, 3.0),
    (15, 0.50, 0.0, 9.0),  # the most forgetting of all, but utility broke
    (20, 0.65, 0.0, 2.5),
]


def test_keep_best_takes_the_most_forgetting_among_held_steps():
    chosen = select_step(points(*SCRIPT), "keep_best", 0.6, None)
    assert chosen.step == 10 and chosen.held


def test_a_step_whose_utility_broke_is_never_chosen_while_one_held():
    # Whatever its forget NLL, step 15 (similarity 0.5 < 0.6) is not taken; nor is any step over the NM ceiling.
    rows = [(0, 1.0, 0.0, 1.0), (5, 0.9, 0.30, 50.0), (10, 0.59, 0.0, 40.0), (15, 0.61, 0.10, 1.5)]
    chosen = select_step(points(*rows, max_nm=0.2), "keep_best", 0.6, 0.2)
    assert chosen.step == 15 and chosen.held
    # A NaN similarity never holds.
    assert not utility_holds(math.nan, 0.0, 0.6, None)
    assert select_step(points((0, 1.0, 0, 1.0), (1, math.nan, 0, 9.0), (2, 0.7, 0, 1.1)), "keep_best", 0.6, None).step == 2


def test_stop_exports_the_last_held_step():
    rows = [(0, 1.0, 0.0, 1.0), (5, 0.9, 0.0, 4.0), (10, 0.7, 0.0, 3.0), (15, 0.4, 0.0, 6.0)]
    chosen = select_step(points(*rows), "stop", 0.6, None)
    assert chosen.step == 10 and chosen.held  # the last that held, though step 5 forgot more


def test_none_held_exports_the_least_broken_step_never_the_original():
    rows = [(0, 1.0, 0.0, 1.0), (5, 0.40, 0.0, 2.0), (10, 0.55, 0.10, 3.0), (15, 0.50, 0.0, 4.0)]
    pts = points(*rows, max_nm=0.05)
    # shortfalls: step 5 0.20; step 10 0.05 + 0.05 = 0.10; step 15 0.10 -> tie, the earlier (10)
    assert [round(shortfall(p, 0.6, 0.05), 6) for p in pts[1:]] == [0.2, 0.1, 0.1]
    chosen = select_step(pts, "keep_best", 0.6, 0.05)
    assert chosen.step == 10 and not chosen.held and "broke at all 3 checks" in chosen.reason
    assert select_step(points((0, 1.0, 0.0, 1.0)), "keep_best", 0.6, None) is None  # nothing trained yet


def test_ties_in_forgetting_take_the_earlier_step():
    rows = [(0, 1.0, 0.0, 1.0), (5, 0.8, 0.0, 3.0), (10, 0.7, 0.0, 3.0)]
    assert select_step(points(*rows), "keep_best", 0.6, None).step == 5


# ------------------------------------------------------------------------------------------- set-up checks
def guard_config(model_dir: Path, qa_files, out: Path, *overrides: str):
    forget, normal = qa_files
    return load_config(None, [f"model={model_dir}", f"forget={forget}", f"normal={normal}", f"output_dir={out}", "progress=false",
                              "lr=1e-2", "max_steps=3", "num_mismatch=2", "guard_every=1", "guard_prompts=4",
                              "guard_max_new_tokens=8", *overrides])


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in prompts))
    return path


def test_guard_set_overlapping_an_evaluation_set_is_an_error(tiny_model_dir, qa_files, tmp_path):
    from unlearnkit.builtin.datasets import load_builtin_dataset

    xstest_prompt = load_builtin_dataset("xstest_safe")[-1]["question"]  # past eval_max_prompts: the whole set counts
    bad = write_prompts(tmp_path / "guard.jsonl", ["Name three colours.", "  " + xstest_prompt.upper() + " "])
    config = guard_config(tiny_model_dir, qa_files, tmp_path / "out", f"guard_set={bad}")
    with pytest.raises(UserError, match="shares 1 prompts with the evaluation set 'overrefusal'"):
        prepare_guard(config, load_run_data(config, METHODS[config.method.name]), 1)
    with pytest.raises(UserError, match="evaluation set 'overrefusal'"):  # and train refuses before writing anything
        train(config)
    assert not (tmp_path / "out").exists()
    # A set the run's eval does not read is fine; the builtin guard set is disjoint from every builtin eval set.
    good = guard_config(tiny_model_dir, qa_files, tmp_path / "out", "eval_overrefusal=", f"guard_set={bad}")
    assert prepare_guard(good, load_run_data(good, METHODS[good.method.name]), 1).prompts[0] == "Name three colours."
    builtin = guard_config(tiny_model_dir, qa_files, tmp_path / "out")
    assert len(prepare_guard(builtin, load_run_data(builtin, METHODS[builtin.method.name]), 1).prompts) == 4


def test_guard_set_overlapping_the_training_data_is_an_error(tiny_model_dir, qa_files, tmp_path):
    normal_prompt = json.loads(qa_files[1].read_text().splitlines()[3])["question"]
    bad = write_prompts(tmp_path / "guard.jsonl", [normal_prompt])
    config = guard_config(tiny_model_dir, qa_files, tmp_path / "out", f"guard_set={bad}")
    with pytest.raises(UserError, match="shares 1 prompts with the training normal data"):
        prepare_guard(config, load_run_data(config, METHODS[config.method.name]), 1)


def test_guard_refuses_several_processes_and_finetune(tiny_model_dir, qa_files, tmp_path):
    config = guard_config(tiny_model_dir, qa_files, tmp_path / "out")
    with pytest.raises(UserError, match="one-process run"):
        prepare_guard(config, load_run_data(config, METHODS[config.method.name]), 2)
    finetune = guard_config(tiny_model_dir, qa_files, tmp_path / "out", "method=finetune")
    with pytest.raises(UserError, match="finetune"):
        prepare_guard(finetune, load_run_data(finetune, METHODS["finetune"]), 1)
    off = guard_config(tiny_model_dir, qa_files, tmp_path / "out", "guard_every=0")
    assert prepare_guard(off, ([], []), 4) is None
    for bad in ("guard_every=-1", "guard_min_similarity=2", "guard_max_nm=1.5", "guard_action=never", "guard_prompts=0"):
        with pytest.raises(UserError):
            guard_config(tiny_model_dir, qa_files, tmp_path / "out", bad)


# ------------------------------------------------------------------------------------------- runs
def scripted(monkeypatch, scores: dict[int, tuple[float, float, float]]) -> None:
    """Replace the guard's scoring by hand numbers per step (similarity, NM, forget NLL)."""

    def fake(self, answers):
        similarity, nm, nll = scores[self.run.state.step]
        return {"similarity": similarity, "nm": nm, "forget_nll": nll}

    monkeypatch.setattr(UtilityGuard, "_score", fake)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model" / "model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_exports_the_held_step_with_most_forgetting(tiny_model_dir, qa_files, tmp_path, monkeypatch):
    # Step 2 forgets most but breaks utility; step 3 holds but forgets less than step 1: step 1 is exported.
    scripted(monkeypatch, {0: (1.0, 0.0, 1.0), 1: (0.9, 0.0, 4.0), 2: (0.3, 0.0, 9.0), 3: (0.8, 0.0, 3.0)})
    result = train(guard_config(tiny_model_dir, qa_files, tmp_path / "guarded", "method=ga"))
    info = json.loads((tmp_path / "guarded" / "run_info.json").read_text())["guard"]
    assert result.steps == 3 and info["exported_step"] == 1 and info["status"] == "held" and result.guard == info
    assert [c["held"] for c in info["checks"]] == [True, True, False, True]
    log = [json.loads(line) for line in (tmp_path / "guarded" / "train_log.jsonl").read_text().splitlines()]
    assert [row["guard_similarity"] for row in log] == [0.9, 0.3, 0.8] and [row["guard_held"] for row in log] == [True, False, True]
    one_step = tmp_path / "one_step"
    train(guard_config(tiny_model_dir, qa_files, one_step, "method=ga", "max_steps=1", "guard_every=0"))
    assert same_weights(weights(tmp_path / "guarded"), weights(one_step))
    assert "step 1 of 3" in (tmp_path / "guarded" / "model" / "README.md").read_text()
    assert [p.name for p in (tmp_path / "guarded" / "guard").iterdir()] == ["step-1.safetensors"]  # only the choice is kept


def test_stop_action_stops_when_utility_breaks(tiny_model_dir, qa_files, tmp_path, monkeypatch):
    scripted(monkeypatch, {0: (1.0, 0.0, 1.0), 1: (0.9, 0.0, 4.0), 2: (0.7, 0.0, 5.0), 3: (0.3, 0.0, 9.0)})
    result = train(guard_config(tiny_model_dir, qa_files, tmp_path / "stopped", "method=ga", "max_steps=6", "guard_action=stop"))
    assert result.steps == 3 and result.stop_reason.startswith("guard: utility broke at step 3")
    assert result.guard["exported_step"] == 2 and result.guard["stopped"]
    # The same run unguarded, checkpointed at step 2 (the lr schedule depends on max_steps: same max_steps).
    plain = tmp_path / "plain"
    train(guard_config(tiny_model_dir, qa_files, plain, "method=ga", "max_steps=6", "guard_every=0", "save_every=2",
                       "keep_checkpoints=5"))
    assert same_weights(weights(tmp_path / "stopped"), load_file(str(plain / "checkpoints" / "step-2" / "trainable.safetensors")))


def test_none_held_warns_loudly_and_exports_the_least_broken(tiny_model_dir, qa_files, tmp_path, monkeypatch, capsys):
    scripted(monkeypatch, {0: (1.0, 0.0, 1.0), 1: (0.5, 0.0, 4.0), 2: (0.55, 0.0, 5.0), 3: (0.2, 0.0, 9.0)})
    result = train(guard_config(tiny_model_dir, qa_files, tmp_path / "broken", "method=ga"))
    assert result.guard["status"] == "none_held" and result.guard["exported_step"] == 2
    assert "WARNING guard: utility broke at every check" in capsys.readouterr().err


def test_guard_every_1_end_to_end_and_resume(tiny_model_dir, qa_files, tmp_path):
    """Real scoring (generation, MiniLM, the forget probe) on the tiny model; a run killed after step 3 and
    resumed from its step-2 checkpoint ends like the uninterrupted one (checks, log, exported weights)."""
    common = ["max_steps=4", "save_every=2", "guard_min_similarity=-1"]  # every check holds: keep_best = most forgetting
    straight = tmp_path / "straight"
    result = train(guard_config(tiny_model_dir, qa_files, straight, *common))
    log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    for row in log:
        assert -1 <= row["guard_similarity"] <= 1 and 0 <= row["guard_nm"] <= 1 and row["guard_forget_nll"] > 0
    checks = result.guard["checks"]
    assert [c["step"] for c in checks] == [0, 1, 2, 3, 4] and checks[0]["similarity"] == 1.0
    best = max(checks[1:], key=lambda c: c["forget_nll"])
    assert result.guard["exported_step"] == best["step"]

    class Killed(Exception):
        pass

    def die(step: int) -> None:
        if step == 3:
            raise Killed

    crashed = tmp_path / "crashed"
    with pytest.raises(Killed):
        train(guard_config(tiny_model_dir, qa_files, crashed, *common), on_step_end=die)
    resumed = train(guard_config(tiny_model_dir, qa_files, crashed, *common), resume=True)
    assert resumed.guard["checks"] == checks and resumed.guard["exported_step"] == result.guard["exported_step"]
    assert same_weights(weights(straight), weights(crashed))
