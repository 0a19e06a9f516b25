"""scripts/train_builtin_judge.py: the per-source table is what its scores say, and a seeded run repeats.

Runs the real script on a tiny seeded subset of the real data (../shared/data beside the repository;
skipped when absent) with a hashed stand-in for the sentence embedder, so it takes seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from unlearnkit.evaluate.judges import BuiltinJudge

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA_ROOT / "guard-benchmarks").is_dir(), reason="../shared/data is not beside the repository")


def load_script():
    spec = importlib.util.spec_from_file_location("train_builtin_judge", REPO / "scripts" / "train_builtin_judge.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def hashed_embed(texts):
    """A deterministic unit vector per text: enough to exercise the pipeline, not to judge anything."""
    vectors = [np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:12], 16)).standard_normal(384) for t in texts]
    return np.array([v / np.linalg.norm(v) for v in vectors], dtype=np.float32)


def run_script(tmp_path: Path, name: str, dry_run: bool = True) -> dict:
    script = load_script()
    out = tmp_path / f"{name}.json"
    argv = ["--data-root", str(DATA_ROOT), "--per-source", "16", "--folds", "2", "--heads", "logreg C=0.01", "--pool-size", "40",
            "--cache-dir", str(tmp_path / "cache"), "--table-out", str(out), "--out", str(tmp_path / "head.safetensors")]
    assert script.main(argv + (["--dry-run"] if dry_run else []), embed=hashed_embed) == 0
    return json.loads(out.read_text())


def test_balanced_metrics_on_a_hand_case():
    script = load_script()
    metrics = script.balanced_metrics(np.array([1, 1, 0, 0, 0]), np.array([0.9, 0.2, 0.8, 0.1, 0.3]), threshold=0.5)
    # TPR 1/2, TNR 2/3; AUC: positives beat 4 of 6 (0.9 > all three, 0.2 > 0.1 only)
    assert metrics == {"n": 5, "harmful_fraction": 0.4, "balanced_accuracy": round((0.5 + 2 / 3) / 2, 4), "tpr": 0.5,
                       "tnr": round(2 / 3, 4), "roc_auc": round(4 / 6, 4)}


def test_script_table_is_reproduced_from_its_scores_and_repeats(tmp_path):
    first = run_script(tmp_path, "first")
    rows = first["heldout_scores"]
    threshold = first["threshold"]
    for source in ("beavertails", "pku", "xstest", "safeunlearning"):
        picked = [r for r in rows if r["source"] == source]
        if not picked:
            continue
        labels = np.array([r["harmful"] for r in picked])
        flagged = np.array([r["score"] >= threshold for r in picked])
        table = first["heldout_prompt_split"][source]
        assert table["n"] == len(picked)
        if 0 < labels.sum() < len(labels):
            tpr, tnr = flagged[labels == 1].mean(), (~flagged[labels == 0]).mean()
            assert table["tpr"] == pytest.approx(tpr, abs=1e-4) and table["tnr"] == pytest.approx(tnr, abs=1e-4)
            assert table["balanced_accuracy"] == pytest.approx((tpr + tnr) / 2, abs=1e-4)
            assert table["roc_auc"] == pytest.approx(roc_auc_score(labels, [r["score"] for r in picked]), abs=1e-4)
    assert set(first["leave_one_source_out"]) == {"beavertails", "pku", "xstest", "safeunlearning"}
    assert all(m["n"] == 16 for m in first["leave_one_source_out"].values())

    second = run_script(tmp_path, "second")  # same seed, embeddings now from the cache
    for key in ("heldout_prompt_split", "leave_one_source_out", "validation", "threshold", "heldout_scores", "sanity_checks"):
        assert first[key] == second[key], key


def test_written_head_loads_in_the_judge_with_its_metrics(tmp_path):
    table = run_script(tmp_path, "written", dry_run=False)
    judge = BuiltinJudge(weights_path=tmp_path / "head.safetensors", show_progress=False)
    assert judge.threshold == table["threshold"] and judge.weights["heldout_prompt_split"] == table["heldout_prompt_split"]
    assert judge.weights["leave_one_source_out"] == table["leave_one_source_out"]
