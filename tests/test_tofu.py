"""TOFU metrics on hand cases, the vendored splits, the bench config, and the pipeline end to end on a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from unlearnkit.errors import UserError
from unlearnkit.evaluate import tofu


def test_truth_ratios_and_scores() -> None:
    # Row 0: paraphrase NLL 1, perturbed NLLs 2 and 4 (mean 3) -> R = exp(1 - 3); row 1: R = exp(0.5 - 0.5) = 1.
    ratios = tofu.truth_ratios([1.0, 0.5], [[2.0, 4.0], [0.0, 1.0]])
    assert ratios.tolist() == pytest.approx([math.exp(-2), 1.0])
    # Forget form: mean min(R, 1/R); the R = e^-2 row gives e^-2, the R = 1 row gives 1.
    assert tofu.truth_ratio_score(ratios, forget=True) == pytest.approx((math.exp(-2) + 1) / 2)
    # Retain form: mean max(0, 1 - R).
    assert tofu.truth_ratio_score(ratios, forget=False) == pytest.approx((1 - math.exp(-2)) / 2)
    assert tofu.truth_ratio_score([4.0], forget=False) == 0.0  # prefers the false answers: clipped at 0
    assert tofu.truth_ratio_score([4.0], forget=True) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        tofu.truth_ratios([1.0, 2.0], [[1.0, 2.0]])


def test_answer_probabilities() -> None:
    assert tofu.answer_probability([0.0, math.log(2)]) == pytest.approx(0.75)
    # True answer p_norm 0.5 against false 0.25 and 0.25 -> share 0.5; second row 0.2 vs 0.2, 0.4 -> 0.25.
    nll = lambda p: -math.log(p)  # noqa: E731
    share = tofu.relative_answer_probability([nll(0.5), nll(0.2)], [[nll(0.25), nll(0.25)], [nll(0.2), nll(0.4)]])
    assert share == pytest.approx((0.5 + 0.25) / 2)


def test_rouge_l_recall() -> None:
    # LCS "the cat sat" = 3 of the reference's 6 tokens; precision would be 1.
    assert tofu.rouge_l_recall("the cat sat", "the cat sat on the mat") == pytest.approx(0.5)
    assert tofu.rouge_l_recall("", "the cat") == 0.0
    assert tofu.mean_rouge_l_recall(["a b", "x"], ["a b", "y"]) == pytest.approx(0.5)


def test_forget_quality_is_the_ks_p_value() -> None:
    # Fully separated samples of 3 and 3: D = 1, exact two-sided p = 2 / C(6, 3) = 0.1.
    assert tofu.forget_quality([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert tofu.forget_quality([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    # Invariant to the R <-> 1/R convention.
    a, b = np.array([0.5, 0.7, 0.9, 1.3]), np.array([0.8, 1.1, 1.2, 2.0])
    assert tofu.forget_quality(a, b) == pytest.approx(tofu.forget_quality(1 / a, 1 / b))


def test_model_utility_is_the_harmonic_mean_of_nine() -> None:
    metrics = {f"{s}_{m}": 0.5 for s in tofu.UTILITY_SETS for m in tofu.UTILITY_METRICS}
    assert tofu.model_utility(metrics) == pytest.approx(0.5)
    metrics["world_facts_rouge_l"] = 0.25  # 9 / (8 * 2 + 4) = 0.45
    assert tofu.model_utility(metrics) == pytest.approx(9 / 20)
    metrics["retain_prob"] = 0.0
    assert tofu.model_utility(metrics) == 0.0
    with pytest.raises(KeyError):
        tofu.model_utility({"retain_prob": 1.0})


def test_vendored_splits() -> None:
    from unlearnkit.builtin.datasets import tofu_rows

    full, forget05, retain95 = tofu_rows("full"), tofu_rows("forget05"), tofu_rows("retain95")
    assert len(full) == 4000 and len(forget05) == 200 and forget05 + retain95 != full
    assert retain95 + forget05 == full  # forget = the last 10 authors
    assert {r["author"] for r in forget05} == set(range(190, 200))
    assert all(len(r["perturbed_answer"]) == 5 and r["paraphrased_answer"] for r in tofu_rows("forget10_perturbed"))
    retain_eval = tofu_rows("retain_perturbed")
    assert len(retain_eval) == 400 and {r["author"] for r in retain_eval} == set(range(20))
    assert len(tofu_rows("real_authors")) == 100 and len(tofu_rows("world_facts")) == 117
    with pytest.raises(UserError, match="unknown TOFU split"):
        tofu_rows("forget50")


def test_tofu_source_loads_as_qa() -> None:
    from unlearnkit.data import load_qa

    assert len(load_qa("tofu:forget01")) == 40


def test_bench_config_splits_bench_and_run_keys(tmp_path) -> None:
    from unlearnkit.bench.tofu import load_bench_config

    preset = tmp_path / "b.yaml"
    preset.write_text("bench:\n  split: forget01\n  retain_authors: 4\nmethod: ga\nlr: 1.0e-5\n")
    bench, run = load_bench_config(preset, ["eval_rows=3", "bench.holdout_authors=2", "max_steps=7"])
    assert (bench.split, bench.retain_authors, bench.holdout_authors, bench.eval_rows) == ("forget01", 4, 2, 3)
    assert (run.method.name, run.train.lr, run.train.max_steps) == ("ga", 1e-5, 7)
    with pytest.raises(UserError, match="retain_authors \\+ holdout_authors"):
        load_bench_config(preset, ["retain_authors=0", "holdout_authors=5"])
    with pytest.raises(UserError, match="unknown bench key"):
        load_bench_config(preset, ["bench.nope=1"])


def test_every_bench_preset_loads() -> None:
    from pathlib import Path

    from unlearnkit.bench.tofu import load_bench_config

    presets = sorted((Path(__file__).resolve().parents[1] / "configs" / "bench").glob("tofu*.yaml"))
    assert presets
    for preset in presets:
        load_bench_config(preset, [])


def _model_result(auc_min_k: float, forget_loss: list[float], holdout_loss: list[float]) -> dict:
    return {"forget_truth_ratios": [0.5, 0.7, 0.9], "mia_auc_min_k": auc_min_k,
            "mia_loss_scores": {"forget": forget_loss, "holdout": holdout_loss}}


def test_summarize_adds_privleak_percent_and_the_reference_attack_against_the_retain_model() -> None:
    from unlearnkit.bench.tofu import summarize

    per_model = {
        # mean log p of 2 forget and 2 held-out rows; the retain model's are the reference
        "target": _model_result(0.9, [-1.0, -1.5], [-2.0, -2.2]),
        "retain": _model_result(0.6, [-2.0, -2.0], [-2.1, -2.1]),
        "unlearned": _model_result(0.4, [-3.0, -2.5], [-2.0, -2.5]),
    }
    summarize(per_model)
    target, retain, unlearned = per_model["target"], per_model["retain"], per_model["unlearned"]
    assert target["privleak_min_k"] == pytest.approx(-75.0)  # (0.1 - 0.4) / 0.4 * 100: still leaks
    assert unlearned["privleak_min_k"] == pytest.approx(50.0)  # (0.6 - 0.4) / 0.4 * 100: over-unlearned
    assert retain["privleak_min_k"] == 0.0
    # Reference scores LOSS(model) - LOSS(retain): target forget [1.0, 0.5] vs held-out [0.1, -0.1] -> AUC 1.
    assert target["mia_auc_reference"] == 1.0
    # Unlearned: forget [-1.0, -0.5] vs held-out [0.1, -0.4]: pairs won 0 of 4, -0.5 vs -0.4 lost too -> 0.
    assert unlearned["mia_auc_reference"] == 0.0
    assert retain["mia_auc_reference"] == 0.5
    assert target["privleak_reference"] == pytest.approx(-100.0, abs=1e-6)  # (0 - 0.5) / 0.5 * 100
    assert retain["forget_quality"] == pytest.approx(1.0)


def test_tofu_bench_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from unlearnkit.cli import main
    from unlearnkit.evaluate import mia

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    args = ["bench", "tofu", "--method", "ga_kl", "--split", "forget01", "--output", str(out), "--quiet", "--config", "none",
            f"model={tiny_model_dir}", "template=paper", "max_length=48", "max_steps=2", "batch_size=2", "lr=1e-3",
            "save_every=0", "progress=false", "retain_authors=1", "holdout_authors=1", "finetune_epochs=0.1",
            "finetune_batch_size=4", "finetune_lr=1e-3", "eval_rows=5", "eval_max_new_tokens=3", "eval_batch_size=4"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    for model in ("target", "retain", "unlearned"):
        r = results[model]
        assert 0 <= r["forget_quality"] <= 1 and 0 <= r["model_utility"] <= 1
        assert 0 <= r["mia_auc_min_k_plus_plus"] <= 1 and len(r["forget_truth_ratios"]) == 5
        assert 0 <= r["mia_auc_min_k"] <= 1 and 0 <= r["mia_auc_gradnorm"] <= 1 and 0 <= r["mia_auc_reference"] <= 1
        assert 0 <= r["forget_exact_memorization"] <= 1 and 0 < r["forget_extraction_strength"] <= 1
        assert r["privleak_min_k"] == pytest.approx(mia.priv_leak(r["mia_auc_min_k"], results["retain"]["mia_auc_min_k"]))
    assert results["retain"]["forget_quality"] == pytest.approx(1.0)
    for attack in mia.ATTACKS:  # the retain model against itself
        assert results["retain"][f"privleak_{attack}"] == pytest.approx(0.0)
    assert results["retain"]["mia_auc_reference"] == 0.5  # its own reference: every score 0, all ties
    assert results["meta"]["stages"]["target"]["steps"] == 2  # ceil(0.1 * 60 rows / 4)
    assert results["meta"]["stages"]["unlearned"]["median_step_s"] > 0
    assert "forget quality" in (out / "report.md").read_text() and (out / "report.html").is_file()
    # A second method reuses both finetuned models and their evaluation.
    assert main([*args[:3], "ga", *args[4:], f"--output={tmp_path / 'second'}"]) == 0
    second = json.loads((tmp_path / "second" / "results.json").read_text())
    assert second["meta"]["stages"]["target"]["reused"] and second["meta"]["stages"]["retain"]["reused"]
    assert second["target"]["forget_truth_ratios"] == results["target"]["forget_truth_ratios"]


def test_the_finetuning_stage_drops_the_unlearning_runs_mismatch_pool(tmp_path) -> None:
    """Target and retain models are plain finetunes: a mismatch pool set for the unlearning would make them invalid."""
    from unlearnkit.bench.tofu import TofuConfig, finetune_config
    from unlearnkit.config import load_config

    run = load_config(None, ["mismatch_pool=gutenberg_austen", "template=chat"])
    config = finetune_config(run, TofuConfig(), tmp_path / "rows.jsonl", 10)
    assert config.method.name == "finetune" and config.data.mismatch_pool == "" and config.data.template == "chat"
