"""The original model's own answers as normal data: generated once, cached, trimmed to whole sentences."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from unlearnkit.config import ModelConfig
from unlearnkit.evaluate.generate import GenerationSettings, generate
from unlearnkit.own_answers import model_fingerprint, own_answers, trim_unfinished


@pytest.mark.parametrize("text, expected", [
    ("First sentence. Second one is cut", "First sentence."),
    ("Is it? Yes! And then", "Is it? Yes!"),
    ("A list:\n1. one\n2. tw", "A list:\n1. one"),
    ("no sentence end at all", "no sentence end at all"),
    ("Version 2.5 is out and", "Version 2.5 is out and"),  # a decimal point is not a sentence end
])
def test_trim_unfinished(text, expected):
    assert trim_unfinished(text) == expected


def test_own_answers_are_the_models_greedy_answers_and_are_cached(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)
    questions = ["What is the capital of France?", "Tell me about Alice."]
    fingerprint = model_fingerprint(ModelConfig(name=str(tiny_model_dir)))
    first = own_answers(model, tokenizer, questions, fingerprint=fingerprint, template="chat", max_new_tokens=8, progress=False)
    direct = generate(model, tokenizer, questions, GenerationSettings(template="chat", max_new_tokens=8), progress=False)
    assert first == [r if done else trim_unfinished(r) for r, done in zip(direct.responses, direct.finished)]
    (cached,) = (tmp_path / "cache" / "own_answers").glob("*.json")
    payload = json.loads(cached.read_text())
    assert payload["questions"] == questions and payload["answers"] == first
    payload["answers"] = ["from the cache", "also cached"]
    cached.write_text(json.dumps(payload))
    again = own_answers(model, tokenizer, questions, fingerprint=fingerprint, template="chat", max_new_tokens=8, progress=False)
    assert again == ["from the cache", "also cached"]  # not regenerated
    other = own_answers(model, tokenizer, questions, fingerprint=fingerprint, template="paper", max_new_tokens=8, progress=False)
    assert other != again  # another template is another key


def test_fingerprint_changes_with_the_weights(tiny_model_dir, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    before = model_fingerprint(ModelConfig(name=str(copy)))
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes() + b"\0")
    assert model_fingerprint(ModelConfig(name=str(copy))) != before
    assert model_fingerprint(ModelConfig(name="owner/model", revision="abc")) == "hub:owner/model@abc"


def test_a_run_with_normal_answers_self_trains_on_the_models_own_answers(tiny_model_dir, qa_files, tmp_path, monkeypatch):
    from unlearnkit.config import load_config
    from unlearnkit.train import train

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    forget, normal = qa_files
    config = load_config(None, [f"model={tiny_model_dir}", f"forget={forget}", f"normal={normal}", "normal_answers=self",
                                f"output_dir={tmp_path / 'run'}", "max_steps=1", "template=chat", "max_length=32", "progress=false"])
    train(config)
    (cached,) = (tmp_path / "cache" / "own_answers").glob("*.json")
    payload = json.loads(cached.read_text())
    assert len(payload["questions"]) == 8 and payload["questions"][0] == "What is the capital of country 0?"
    assert payload["answers"] != ["The capital is city 0."] * 8  # not the dataset's answers
