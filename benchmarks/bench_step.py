"""Per-step time and peak memory of the paper's full method (GA + mismatch + KL).

Default: the builtin SmolLM2-135M on CPU, batch 2, K=5, sequences padded/truncated to 128 tokens
(14 policy sequences + 2 reference sequences per step). Prints figures; not part of the test run.

    .venv/bin/python benchmarks/bench_step.py [--model smollm2-135m] [--steps 5] [--lora] [--precision bf16]
    .venv/bin/python benchmarks/bench_step.py --arch opt-1.3b --device cuda   # random-init real-size config
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

from unlearnkit.config import load_config
from unlearnkit.data import StepBatch, StepBatcher, TokenizedQA
from unlearnkit.methods import METHODS
from unlearnkit.modeling import Reference, add_lora, load_model
from unlearnkit.train import compute_terms

ARCHS = {  # random-init configs of the paper's models: no download needed
    "opt-1.3b": dict(model_type="opt", hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32,
                     vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=2048),
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, intermediate_size=11008,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
}


def synthetic_batcher(vocab: int, batch: int, k: int, length: int) -> StepBatcher:
    """Full-length sequences (half prompt, half answer): the worst case for a 128-token budget."""
    gen = torch.Generator().manual_seed(0)
    half = length // 2

    def example() -> TokenizedQA:
        ids = torch.randint(5, vocab, (length,), generator=gen).tolist()
        return TokenizedQA(ids[:half], ids[half:])

    return StepBatcher([example() for _ in range(16)], [example() for _ in range(16)], batch_size=batch,
                       num_mismatch=k, max_length=length, pad_id=0, seed=0, mismatch_source="normal")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--arch", choices=sorted(ARCHS), help="random-init architecture instead of --model")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    config = load_config(None, [f"model={args.model}", f"lora={str(args.lora).lower()}"])
    if args.arch:
        from transformers import AutoConfig, AutoModelForCausalLM

        spec = dict(ARCHS[args.arch])
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    else:
        model = load_model(config.model)
    vocab = model.config.vocab_size
    if args.lora:
        model = add_lora(model, config.model)
    dtype = torch.bfloat16 if args.precision == "bf16" and args.device == "cuda" else torch.float32
    model.to(args.device, dtype=dtype)
    reference = Reference(model, lora=args.lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    batcher = synthetic_batcher(vocab, args.batch_size, args.k, args.length)
    method = METHODS["ga_mismatch_kl"]
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.precision == "bf16")
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    times = []
    for step in range(args.steps + 1):  # step 0 is warm-up
        batch: StepBatch = batcher(step)
        if args.device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = method.combine(compute_terms(model, reference, batch), config.method)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device != "cpu":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    tokens = batcher(0).num_tokens
    name = args.arch or args.model
    print(f"model {name}  device {args.device}  precision {args.precision}  lora {args.lora}  threads {torch.get_num_threads()}")
    print(f"sequences/step {batcher(0).batch['input_ids'].shape[0]} (+{args.batch_size} reference)  tokens/step {tokens}")
    print(f"step time: median {statistics.median(times):.2f}s  min {min(times):.2f}s  over {len(times)} steps")
    print(f"throughput: {tokens / statistics.median(times):.0f} tokens/s")
    print(f"peak host RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
