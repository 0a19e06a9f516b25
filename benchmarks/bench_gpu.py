"""GPU step benchmark: the official loop's work on random-init OPT-1.3B and Llama-2-7B, one table.

Needs one CUDA GPU and NO network: the models are built from their published configs with random weights
(unlearnkit.plan.ARCHITECTURES; the step's cost does not depend on the weights' values), the tokenizer is a
byte-level BPE trained here on the benchmark's own text (8,000 ids: in range of every model's vocabulary,
tokens per text close to a real tokenizer's), forget = the first Human turn and the more harmful Assistant
reply of hh-rlhf harmless-base rows (../shared/data/hh-rlhf-harmless), normal = TruthfulQA (builtin).
The official loop's work: batch 2, K=5 mismatch answers, the paper's template, max_length 512, GA +
mismatch + KL (method ga_mismatch_kl).

Each run is unlearnkit's own ``train()`` (no model is saved): the median of the ``step_time_s`` it logs
(measured after torch.cuda.synchronize) over ``--steps`` (>= 20) steps after ``--warmup`` steps (which also
take torch.compile's first compilations), tokens/s = the step's sequence tokens / median s/step, MFU =
model FLOPs per step (6 x trained params x policy tokens + 2 x params x reference tokens, LoRA: 4 x params
x policy tokens) / median s/step / the GPU's peak (H100/H200 SXM: 989 TFLOP/s bf16, 67 fp32; --peak-tflops
for others), peak GiB = the highest per-step peak of allocated device memory.

    python benchmarks/bench_gpu.py                       # all runs (about 10 minutes on one H100/H200)
    python benchmarks/bench_gpu.py --runs opt-fp32,opt-bf16 --steps 20
    python benchmarks/bench_gpu.py --tiny                # CPU smoke mode: tiny configs, 2 steps (what the tests run)

Without a GPU and without --tiny it stops with one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
HH_RLHF = REPO.parent / "shared" / "data" / "hh-rlhf-harmless" / "harmless-base_test.jsonl"
OFFICIAL = ["template=paper", "max_length=512", "method=ga_mismatch_kl", "num_mismatch=5", "batch_size=2", "lr=2e-6",
            "max_grad_norm=0", "save_every=0", "attention=sdpa"]

# name: (architecture, label, overrides)
RUNS = {
    "opt-fp32": ("facebook/opt-1.3b", "OPT-1.3B full fp32", ["precision=fp32"]),
    "opt-bf16": ("facebook/opt-1.3b", "OPT-1.3B full bf16", ["precision=bf16"]),
    "opt-bf16-eager": ("facebook/opt-1.3b", "OPT-1.3B full bf16 compile=false", ["precision=bf16", "compile=false"]),
    "llama-lora": ("meta-llama/Llama-2-7b-hf", "Llama-2-7B LoRA bf16",
                   ["precision=bf16", "lora=true", "lora_r=32", "lora_alpha=16", "lora_target_modules=q_proj,v_proj",
                    "gradient_checkpointing=true", "save_mode=adapter"]),
    "llama-full-8bit": ("meta-llama/Llama-2-7b-hf", "Llama-2-7B full bf16 adamw_8bit ckpt",
                        ["precision=bf16", "optimizer=adamw_8bit", "gradient_checkpointing=true"]),
}
TINY = {
    "tiny-opt-fp32": ({"model_type": "opt", "hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "vocab_size": 8192, "max_position_embeddings": 1024, "word_embed_proj_dim": 64}, "tiny-opt full fp32",
                      ["precision=fp32"]),
    "tiny-opt-bf16": ({"model_type": "opt", "hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "vocab_size": 8192, "max_position_embeddings": 1024, "word_embed_proj_dim": 64}, "tiny-opt full bf16",
                      ["precision=bf16"]),
    "tiny-llama-lora": ({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8192, "max_position_embeddings": 1024},
                        "tiny-llama lora bf16", ["precision=bf16", "lora=true", "save_mode=adapter"]),
}


class _Stop(Exception):
    """Raised from on_step_end after the last timed step: nothing is saved."""


def hh_rlhf_rows(limit: int) -> list[dict[str, str]]:
    """(first Human turn, the rejected = more harmful first Assistant reply) of hh-rlhf harmless-base rows."""
    rows = []
    for line in HH_RLHF.read_text().splitlines():
        text = json.loads(line)["rejected"]
        parts = text.split("\n\nAssistant:")
        if len(parts) < 2 or "\n\nHuman:" not in parts[0]:
            continue
        question = parts[0].split("\n\nHuman:", 1)[1].strip()
        answer = parts[1].split("\n\nHuman:", 1)[0].strip()
        if question and answer:
            rows.append({"question": question, "answer": answer})
        if len(rows) >= limit:
            break
    return rows


def make_tokenizer(texts: list[str], folder: Path, vocab: int = 8000) -> Path:
    """A byte-level BPE tokenizer trained on the benchmark's own text, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return folder


def model_flops(params: int, lora: bool, policy_tokens: float, reference_tokens: float) -> float:
    """FLOPs of one step: forward 2N per token, backward 4N (2N with frozen weights: only activation gradients;
    LoRA's adapter is negligible), the reference forward 2N per token. Attention's own FLOPs are left out."""
    return (4.0 if lora else 6.0) * params * policy_tokens + 2.0 * params * reference_tokens


def peak_flops(precision: str, override: float | None) -> float:
    if override:
        return override * 1e12
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    if any(k in name for k in ("H100", "H200", "GH200")):
        return (989e12 if precision == "bf16" else 67e12)
    if "A100" in name:
        return (312e12 if precision == "bf16" else 19.5e12)
    return float("nan")


def bench_one(label: str, architecture: dict | str, overrides: list[str], data: dict[str, Path], steps: int, warmup: int,
              device: str, peak_tflops: float | None) -> dict:
    import unlearnkit.train as train_module
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForCausalLM, CONFIG_MAPPING

    from unlearnkit.config import load_config
    from unlearnkit.plan import model_config
    from unlearnkit.step import step_positions

    if isinstance(architecture, str):
        lm_config = model_config(architecture)
    else:
        sizes = dict(architecture)
        lm_config = CONFIG_MAPPING[sizes.pop("model_type")](**sizes)
    out = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    config = load_config(None, [f"model={data['tokenizer']}", f"forget={data['forget']}", f"normal={data['normal']}",
                                f"output_dir={out}", "progress=false", f"max_steps={warmup + steps}", *OFFICIAL, *overrides])

    def random_model(model_config_, dtype=torch.float32):
        # Random init straight on the device (a 7B model initialised on the host takes minutes), float32 as
        # load_model gives it; gradient checkpointing as load_model applies it.
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(lm_config, dtype=dtype)
        if model_config_.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        return model

    timings: list[dict] = []
    original_step = train_module.train_step

    def timed_step(run):
        row = original_step(run)
        if not timings:
            # The step's packed positions for the FLOP count (policy with gradient, reference without).
            batch = run.batcher(run.state.step - 1)
            timings.append(step_positions(batch, run.needs.step_needs, run.config.train.pack_tokens))
            timings.append({"params": sum(p.numel() for p in run.model.parameters()),
                            "trained": sum(p.numel() for p in run.model.parameters() if p.requires_grad)})
        timings.append(row)
        return row

    def stop(step: int) -> None:
        if step >= warmup + steps:
            raise _Stop

    AcceleratorState._reset_state()
    saved = (train_module.load_model, train_module.train_step)
    train_module.load_model, train_module.train_step = random_model, timed_step
    try:
        train_module.train(config, on_step_end=stop)
    except _Stop:
        pass
    finally:
        train_module.load_model, train_module.train_step = saved
    positions, sizes, rows = timings[0], timings[1], timings[2:]
    timed = rows[warmup:]
    median = statistics.median(r["step_time_s"] for r in timed)
    tokens = statistics.median(r["tokens_per_s"] * r["step_time_s"] for r in timed)
    lora = "lora=true" in overrides
    flops = model_flops(sizes["params"], lora, positions["policy_real"], positions.get("reference_positions", 0))
    precision = "bf16" if "precision=bf16" in overrides else "fp32"
    peaks = [r["peak_mem_gib"] for r in timed if "peak_mem_gib" in r]
    import gc

    gc.collect()  # the run's models and optimizer go before the next run is built
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"run": label, "median_s_per_step": median, "steps_timed": len(timed), "tokens_per_step": tokens,
            "tokens_per_s": tokens / median, "mfu": flops / median / peak_flops(precision, peak_tflops),
            "peak_gib": max(peaks) if peaks else None, "policy_positions": positions["policy_positions"]}


def table(rows: list[dict]) -> str:
    lines = ["| run | median s/step | tokens/s | MFU | peak GiB |", "|---|---|---|---|---|"]
    for r in rows:
        mfu = "-" if r["mfu"] != r["mfu"] else f"{r['mfu']:.1%}"
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        lines.append(f"| {r['run']} | {r['median_s_per_step']:.3f} | {r['tokens_per_s']:.0f} | {mfu} | {peak} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke mode: tiny configs (no GPU needed)")
    parser.add_argument("--runs", help=f"comma-separated subset of {', '.join(RUNS)} (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--forget-rows", type=int, default=200, help="hh-rlhf rows used as forget data")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak TFLOP/s for MFU (default: H100/H200/A100 known)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        print("bench_gpu: error: no CUDA GPU here; run it on a GPU machine, or pass --tiny for the CPU smoke mode", file=sys.stderr)
        return 2
    if not args.tiny and args.steps < 20:
        print("bench_gpu: note: fewer than 20 timed steps", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_data_"))
    from unlearnkit.data import load_qa

    forget = hh_rlhf_rows(args.forget_rows) if HH_RLHF.is_file() else [
        {"question": e.question, "answer": e.answer} for e in load_qa("pku_harmful_train", limit=args.forget_rows)]
    normal = [{"question": e.question, "answer": e.answer} for e in load_qa("truthfulqa_train")]
    (work / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in forget))
    (work / "normal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in normal))
    texts = [r["question"] + " " + r["answer"] for r in forget + normal]
    data = {"forget": work / "forget.jsonl", "normal": work / "normal.jsonl",
            "tokenizer": make_tokenizer(texts, work / "tokenizer", vocab=1000 if args.tiny else 8000)}
    chosen = TINY if args.tiny else {k: RUNS[k] for k in (args.runs.split(",") if args.runs else RUNS)}
    device = "cpu" if args.tiny else "cuda"
    rows = []
    for name, (architecture, label, overrides) in chosen.items():
        print(f"bench_gpu: {label} ...", file=sys.stderr, flush=True)
        try:
            rows.append(bench_one(label, architecture, overrides, data, args.steps, args.warmup, device, args.peak_tflops))
        except torch.cuda.OutOfMemoryError as exc:
            rows.append({"run": label + " (OOM)", "median_s_per_step": float("nan"), "tokens_per_s": float("nan"),
                         "mfu": float("nan"), "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "error": str(exc)[:200]})
            torch.cuda.empty_cache()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
