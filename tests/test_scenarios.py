"""`unlearnkit scenario NAME`: every stage trains, the chain passes models on, one evaluation, a report."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from unlearnkit.cli import main
from unlearnkit.scenarios import SCENARIOS, _split_overrides

TINY = ["eval_max_prompts=2", "max_new_tokens=3", "max_steps=1", "max_forget=2", "max_normal=4", "max_length=48",
        "progress=false", "save_every=0"]


def test_overrides_split_by_stage():
    stages = SCENARIOS["copyright"].stages
    common, per_stage = _split_overrides(["lr=1e-5", "memorize.max_steps=3", "unlearn.train.lr=2e-5", "train.seed=1"], stages)
    assert common == ["lr=1e-5", "train.seed=1"]
    assert per_stage == {"memorize": ["max_steps=3"], "unlearn": ["train.lr=2e-5"]}


def test_copyright_scenario_chains_memorize_into_unlearn_and_reuses_finished_stages(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "copyright"
    argv = ["scenario", "copyright", "--output", str(out), "--presets", str(REPO / "configs"), "--quiet",
            f"model={tiny_model_dir}", *TINY, "memorize.max_steps=2"]
    assert main(argv) == 0, capsys.readouterr().err
    memorized = json.loads((out / "memorized" / "run_info.json").read_text())
    assert memorized["steps"] == 2
    unlearn_config = (out / "unlearned" / "config.yaml").read_text()
    assert f"name: {out / 'memorized' / 'model'}" in unlearn_config  # the chain, not the override
    results = json.loads((out / "results.json").read_text())
    assert [k for k in results if k != "meta"] == ["original", "memorized", "unlearned"]
    for label in ("original", "memorized", "unlearned"):
        assert {"leak_rate_extraction", "mean_bleu_extraction", "forget_nll_extraction", "on_topic_rate_benign",
                "exact_memorization_extraction", "extraction_strength_extraction"} <= results[label].keys()
        for key in ("exact_memorization_extraction", "extraction_strength_extraction"):  # per item, with an interval
            low, high = results[label]["ci"][key]
            assert 0 <= low <= high <= 1 and low - 1e-6 <= results[label][key] <= high + 1e-6  # the interval is rounded to 6 digits
    # Utility is also compared with the memorized model (the model the user had): itself -> 1.
    assert results["memorized"]["similarity_to_memorized_benign"] == pytest.approx(1.0, abs=1e-5)
    assert 0 <= results["unlearned"]["similarity_to_memorized_benign"] <= 1 + 1e-6
    assert results["meta"]["prompt_sets"]["extraction"]["source"] == "gutenberg_alice"
    assert results["meta"]["generation"]["template"] == "chat"  # utility sets in the chat format; extraction stays raw
    assert (out / "report.html").is_file()
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("(reused)") == 2
    # A copied scenario folder keeps its memorized stage; the unlearned stage, whose input model moved, retrains.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert main([*argv[:3], str(copy), *argv[4:]]) == 0
    printed = capsys.readouterr().out
    assert "stage 'memorized' already trained" in printed and "stage 'unlearned' trained" in printed


def test_hallucination_scenario_reports_both_rates(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "halu"
    code = main(["scenario", "hallucination", "--output", str(out), "--presets", str(REPO / "configs"), "--quiet",
                 f"model={tiny_model_dir}", *TINY])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert {"hallucination_rate_hallucination", "right_answer_rate_hallucination"} <= results["unlearned"].keys()


@pytest.mark.parametrize("argv, expected", [
    (["scenario", "copyright", "nosuchkey=1"], "unknown config key 'nosuchkey'"),
    (["scenario", "copyright", "--presets", "/nonexistent"], "scenario preset"),
])
def test_bad_scenario_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, expected):
    code = main([*argv, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_every_scenario_preset_ships_and_loads():
    from unlearnkit.config import load_config

    for scenario in SCENARIOS.values():
        for stage in scenario.stages:
            assert load_config(REPO / "configs" / stage.preset, []).data.forget
