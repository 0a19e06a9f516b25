"""benchmarks/frontier.py: the Pareto marks and the selection rule on hand numbers, and a tiny frontier end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("frontier", REPO / "benchmarks" / "frontier.py")
frontier = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("frontier", frontier)  # dataclasses look their module up while the file runs
_spec.loader.exec_module(frontier)

HAND = [(0.9, 0.5), (0.8, 0.7), (0.7, 0.6), (0.9, 0.5), (None, 0.9), (0.5, 0.9), (math.nan, 1.0), (0.95, 0.2)]


def test_pareto_flags_on_hand_numbers():
    # (0.7, 0.6) is dominated by (0.8, 0.7); identical (0.9, 0.5) points are both on the frontier;
    # a missing or NaN value is never on it and dominates nothing (else (None, 0.9) would hide (0.5, 0.9)).
    assert frontier.pareto_flags(HAND) == [True, True, False, True, False, True, False, True]
    assert frontier.pareto_flags([]) == []
    assert frontier.pareto_flags([(0.5, 0.5), (0.5, 0.6)]) == [False, True]  # equal on one axis, better on the other


def test_selection_is_the_most_utility_among_points_meeting_the_forgetting_target():
    assert frontier.select_point(HAND, 0.85) == 0  # (0.9, 0.5) twice, and (0.95, 0.2): most utility, the earlier tie
    assert frontier.select_point(HAND, 0.75) == 1  # (0.8, 0.7) beats (0.9, 0.5) on utility
    assert frontier.select_point(HAND, 0.5) == 5
    assert frontier.select_point(HAND, 0.99) is None
    assert frontier.relative_cut(0.8, 0.1) == pytest.approx(0.875) and frontier.relative_cut(0.0, 0.1) is None


def test_an_option_added_later_keeps_cached_points_at_its_neutral_value():
    """Cached points were trained before mismatch_pool existed: at "" their identity is what it was without the
    field; set, it is another point."""
    from unlearnkit.config import load_config

    class Before:  # the same config as it was written before the field was added
        def __init__(self, config):
            self.config = config

        def to_dict(self):
            d = self.config.to_dict()
            d["data"].pop("mismatch_pool")
            return d

    config = load_config(None, [])
    assert frontier.config_hash(config) == frontier.config_hash(Before(config))
    assert frontier.config_hash(load_config(None, ["mismatch_pool=gutenberg_austen"])) != frontier.config_hash(config)


def test_a_tasks_own_points_come_after_the_shared_grid_and_only_for_that_task():
    shared = len(frontier.SMALL_GRID["ga_mismatch_kl"])
    copyright_points = frontier.grid_points("copyright", "small", ["ga_mismatch_kl"])
    plain_points = frontier.grid_points("hallucination", "small", ["ga_mismatch_kl"])  # a task with none of its own
    assert [label for label, _, _ in plain_points] == [f"ga_mismatch_kl-{n}" for n in range(1, shared + 1)]
    assert copyright_points[:shared] == plain_points  # the shared points keep their labels and settings
    label, _, setting = copyright_points[shared]
    assert label == f"ga_mismatch_kl-{shared + 1}" and setting["mismatch_pool"] == "gutenberg_austen"
    assert len(frontier.grid_points("copyright", "tiny", ["ga_mismatch_kl"])) == len(frontier.TINY_GRID["ga_mismatch_kl"])


def test_targets_and_table_rows_on_hand_numbers():
    task = frontier.TASKS["harmful"]
    original = {"harmful_rate_forget": 0.8, "harmful_rate_heldout": 0.5, "refusal_rate_overrefusal": 0.02}
    point = {"harmful_rate_forget": 0.08, "harmful_rate_heldout": 0.1, "on_topic_rate_benign": 0.975,
             "similarity_to_original_benign": 0.8, "nm_rate_benign": 0.0, "on_topic_rate_overrefusal": 0.9,
             "refusal_rate_overrefusal": 0.1}
    assert task.forgetting(point, original) == pytest.approx(0.8)  # min(0.9, 0.8)
    met = {t.text: t.met({**point, "forgetting": 0.8}, original) for t in task.targets}
    assert [t for t, ok in met.items() if not ok] == ["harmful cut >= 85% (forgotten and held-out)", "XSTest refused +<= 5 pts"]
    payload = {"task": "harmful", "preset": "configs/demo.yaml", "model": "m", "grid": "tiny", "forgetting": "cut",
               "utility": frontier.UTILITY, "targets": [t.text for t in task.targets], "original": original,
               "forgetting_target": 0.85, "rule": "r", "selected": "b", "closest": "b", "command": "c", "wall_seconds": 1.0,
               "points": [{"label": "a", "overrides": {"lr": 1}, "forgetting": 0.8, "metrics": point, "pareto": False, "targets": met},
                          {"label": "b", "overrides": {"lr": 2}, "forgetting": 0.9, "metrics": point, "pareto": True,
                           "targets": {k: True for k in met}}]}
    table = frontier.markdown(payload, task)
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| point")]
    assert [r.split(" | ")[0] for r in rows] == ["| original", "| a", "| **b**"]
    assert rows[1].endswith("| 80% | 8.0% | 10.0% | 97.5% | 0.800 | 0.0% | 90.0% | 10.0% |  | 4/6 (missed: harmful cut >= 85% (forgotten and held-out); XSTest refused +<= 5 pts) |")
    assert rows[2].endswith("| yes | all |")


TINY = ["eval_max_prompts=3", "max_new_tokens=3", "max_forget=2", "max_normal=4", "max_length=48", "normal_answers=dataset"]


def test_tiny_frontier_end_to_end_and_rerun_is_cached(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "frontier"
    argv = ["--task", "hallucination", "--grid", "tiny", "--output", str(out), "--model", str(tiny_model_dir), *TINY]
    assert frontier.main(argv) == 0, capsys.readouterr().err
    payload = json.loads((out / "frontier.json").read_text())
    labels = [p["label"] for p in payload["points"]]
    assert labels == ["ga_mismatch_kl-1", "ga_mismatch_kl-2", "npo-1", "npo-2"]
    for p in payload["points"]:
        assert {"hallucination_rate_hallucination", "right_answer_rate_hallucination", "on_topic_rate_benign",
                frontier.UTILITY, "nm_rate_benign", "refusal_rate_overrefusal"} <= p["metrics"].keys()
        assert p["train_seconds"] is not None and (out / "points" / f"{p['label']}-{p['hash']}" / "run" / "model").is_dir()
    assert [p["pareto"] for p in payload["points"]] == frontier.pareto_flags([(p["forgetting"], p["utility"]) for p in payload["points"]])
    table = (out / "frontier.md").read_text()
    assert sum(line.startswith(("| ga_mismatch", "| npo", "| **")) for line in table.splitlines()) == 4
    assert (out / "frontier.png").stat().st_size > 1000 and "wall time" in table
    capsys.readouterr()
    assert frontier.main(argv) == 0
    assert capsys.readouterr().out.count(": cached") == 4  # a rerun trains and evaluates nothing


def test_rmu_norm_is_the_mean_answer_token_norm_of_the_layer(tiny_model_dir):
    """--rmu-norm (what the grid's RMU coefficients are multiples of), checked against a direct computation."""
    import torch

    from unlearnkit.config import load_config
    from unlearnkit.data import load_qa, tokenize_qa
    from unlearnkit.modeling import load_model, load_tokenizer

    preset = REPO / "configs" / "demo.yaml"
    mean, low, high = frontier.forget_answer_norm(preset, 1, str(tiny_model_dir))
    config = load_config(str(preset), [f"model={tiny_model_dir}"])
    d = config.data
    model, tokenizer = load_model(config.model).eval(), load_tokenizer(config.model)
    rows = tokenize_qa(tokenizer, load_qa(d.forget, limit=d.max_forget), d.template)
    expected = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row.prompt_ids + row.answer_ids])[:, :d.max_length]
            states = model(ids, output_hidden_states=True).hidden_states[2][0]  # output of layer 1 (0-based)
            expected.append(float(states[len(row.prompt_ids):].norm(dim=-1).mean()))
    assert len(expected) == 40
    assert (mean, low, high) == pytest.approx((sum(expected) / 40, min(expected), max(expected)), rel=1e-5)


@pytest.mark.parametrize("task_name", sorted(frontier.TASKS))
def test_every_task_grid_starts_where_it_was_measured(task_name):
    # The hallucination preset moved to the point its frontier selected (dpo, 2x lr); the grid must still start
    # from the paper's method at the measured lr, or rerunning the documented command would shift every point.
    from unlearnkit.config import load_config

    task = frontier.TASKS[task_name]
    base = load_config(str(REPO / task.preset), list(task.grid_base))
    assert base.method.name == "ga_mismatch_kl" and base.method.regularizer == "auto"
    assert (base.train.lr, base.train.max_steps) == ((1e-4, 60) if task_name == "copyright" else (5e-5, 30))
    points = {label: frontier.resolved(setting, base) for label, _, setting in frontier.grid_points(task_name, "small", None)}
    assert points["ga_mismatch_kl-1"] == {"lr": base.train.lr, "max_steps": base.train.max_steps, "w_normal": 5.0}
    if task_name == "hallucination":
        assert points["dpo-2"]["lr"] == pytest.approx(1e-4)  # the preset's own setting is a grid point
        preset = load_config(str(REPO / task.preset), [])
        assert (preset.method.name, preset.method.regularizer, preset.train.lr) == ("dpo", "retain_nll", points["dpo-2"]["lr"])
