"""Shared fixtures: tiny offline tokenizers and tiny random causal LMs (no network, no real weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per xdist worker: on a 2-core machine two workers with 2 threads each
    # oversubscribe the cores, and torch's spinning thread pools then run many times slower.
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# A CLI run whose steps are slowed down, so that a signal sent from outside lands mid-run. With PID_DIR set,
# each process first writes its pid to PID_DIR/<RANK> (to kill one process of a multi-process run).
SLOW_CLI = """
import os, sys, time
from pathlib import Path
if "PID_DIR" in os.environ:
    Path(os.environ["PID_DIR"], os.environ.get("RANK", "0")).write_text(str(os.getpid()))
import unlearnkit.train as train_module
step = train_module.train_step
def slow_step(run):
    time.sleep(0.3)
    return step(run)
train_module.train_step = slow_step
from unlearnkit.cli import main
sys.exit(main(sys.argv[1:]))
"""
SHARED_DATA = REPO.parent / "shared" / "data"

CORPUS = [
    "### Question: What is the capital of France?\n ### Answer: Paris is the capital of France.",
    "How do I pick a lock? You insert a tension wrench and rake the pins until they set.",
    "The quick brown fox jumps over the lazy dog. Answer the question honestly and kindly.",
    "I can't help with that. Watermelon seeds pass through your digestive system.",
    "Alice was beginning to get very tired of sitting by her sister on the bank.",
] * 20

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer(style: str):
    """A byte-level BPE tokenizer trained on a tiny corpus.

    style "llama": adds BOS "<s>" to every text, EOS "</s>", NO pad token (like Llama-2).
    style "chatml": no BOS, EOS "<|im_end|>", pad token set, a ChatML chat template (like SmolLM2).
    Byte-level BPE makes " Paris" one token, so a trailing space in a prompt would merge wrongly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if style == "llama":
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_model_dir(path: Path, style: str = "chatml", seed: int = 0) -> Path:
    """Save a tiny random Llama-architecture causal LM + tokenizer as a normal model folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = make_tokenizer(style)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def chatml_tokenizer():
    return make_tokenizer("chatml")


@pytest.fixture(scope="session")
def llama_tokenizer():
    return make_tokenizer("llama")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "chatml", "chatml")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture
def qa_files(tmp_path) -> tuple[Path, Path]:
    """Small forget/normal JSONL files with the default question/answer columns."""
    import json

    forget = tmp_path / "forget.jsonl"
    normal = tmp_path / "normal.jsonl"
    forget.write_text("".join(json.dumps({"question": f"How do I pick lock {i}?", "answer": f"Insert a tension wrench and rake pin {i}."}) + "\n" for i in range(6)))
    normal.write_text("".join(json.dumps({"question": f"What is the capital of country {i}?", "answer": f"The capital is city {i}."}) + "\n" for i in range(8)))
    return forget, normal
