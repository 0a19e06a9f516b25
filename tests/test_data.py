"""Tests for unlearnkit.data: answer masks, prompt formats, truncation, collation, step batches, loading.

Tokenizers come from conftest: ``chatml_tokenizer`` (no BOS, EOS <|im_end|>, pad <pad>, ChatML template)
and ``llama_tokenizer`` (BOS <s> on every text, EOS </s>, no pad token), both byte-level BPE, where a
space merges into the following word ("Ġthe").
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnkit.builtin.datasets import builtin_dataset_path
from unlearnkit.data import (
    QAExample,
    StepBatcher,
    TokenizedQA,
    collate,
    encode_answer,
    encode_pair,
    encode_prompt,
    format_answer,
    format_prompt,
    indices_for_step,
    join_prompt_answer,
    load_qa,
    load_rows,
    pad_id_of,
    sample_mismatch,
    tokenize_qa,
)
from unlearnkit.errors import UserError
from unlearnkit.losses import IGNORE_INDEX

X = IGNORE_INDEX
QUESTION = "What is the capital of France?"
ANSWER = "the capital of France is Paris."  # starts with "the": " the" is one merged BPE token "Ġthe"
TOKENIZERS = ["chatml_tokenizer", "llama_tokenizer"]


def answer_tokens(labels: list[int]) -> list[int]:
    return [t for t in labels if t != X]


# ------------------------------------------------------------------------------------------ paper template
@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_paper_template_answer_mask(tokenizer_name: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(tokenizer_name)
    prompt = format_prompt(tok, QUESTION, "paper")
    answer = format_answer(ANSWER, "paper", prompt)
    assert prompt == f"### Question: {QUESTION}\n ### Answer:"
    assert answer == " " + ANSWER

    prompt_ids, answer_ids = encode_prompt(tok, prompt), encode_answer(tok, answer)
    ids, labels = join_prompt_answer(prompt_ids, answer_ids, max_length=512)
    assert ids == prompt_ids + answer_ids
    assert labels == [X] * len(prompt_ids) + answer_ids  # -100 exactly on the prompt
    assert tok.decode(answer_tokens(labels)) == " " + ANSWER + tok.eos_token

    # Ids equal the tokenization of the joined text (typed out here, not built by the module):
    # no token lost or split at the prompt/answer seam.
    joined = f"### Question: {QUESTION}\n ### Answer: {ANSWER}"
    assert prompt_ids + answer_ids[:-1] == tok(joined)["input_ids"]
    # The space before the answer merges with its first word, as in the joined text.
    assert tok.convert_ids_to_tokens(answer_ids[0]) == "Ġthe"
    assert tok("the", add_special_tokens=False)["input_ids"] != [answer_ids[0]]  # a real merge, not a no-op

    # EOS ends the answer and appears nowhere else.
    assert answer_ids[-1] == ids[-1] == tok.eos_token_id
    assert ids.count(tok.eos_token_id) == 1


def sentencepiece_tokenizer(legacy: bool):
    """A Llama-style SentencePiece BPE tokenizer (pieces start with "▁", BOS on every text, EOS </s>).

    legacy=True is Llama-2's tokenizer.json: the normalizer prepends "▁" to EVERY text and turns spaces
    into "▁" (no pre-tokenizer), so a text tokenized on its own starts with a "▁" piece of its own.
    legacy=False is the newer Metaspace pre-tokenizer that prepends "▁" only at the start of the text.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import CORPUS

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    # SentencePiece pieces never hold an inner "▁": learn merges on whitespace-split words.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    alphabet = sorted(set("".join(CORPUS) + "MadridSpain?.,:#\n"))
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet))
    if legacy:
        tok.pre_tokenizer = None
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-normalizer", "metaspace"])
@pytest.mark.parametrize("template", ["paper", "plain"])
def test_sentencepiece_seam_keeps_the_joined_tokenization(legacy: bool, template: str) -> None:
    tok = sentencepiece_tokenizer(legacy)
    question, answer = "What is the capital of Spain?", "Madrid, the capital, is lovely."
    prompt = format_prompt(tok, question, template)
    answer_text = format_answer(answer, template, prompt)
    (tokenized,) = tokenize_qa(tok, [QAExample(question, answer)], template)
    joined = tok(prompt + answer_text)["input_ids"]
    assert tokenized.prompt_ids + tokenized.answer_ids == joined + [tok.eos_token_id]
    assert tokenized.prompt_ids == encode_prompt(tok, prompt)  # the prompt is exactly what is masked
    assert tok.convert_ids_to_tokens(tokenized.answer_ids[0]).startswith("▁")  # the first answer piece is kept
    assert tok.decode(tokenized.answer_ids[:-1]).strip() == answer
    if legacy:
        # Why: the answer tokenized on its own gains a stray "▁" piece the model never produces after the prompt.
        alone = encode_answer(tok, answer_text)
        assert encode_prompt(tok, prompt) + alone != joined + [tok.eos_token_id]


def test_encode_pair_falls_back_when_a_merge_crosses_the_seam(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    prompt = "### Question: hi\n ### Answer: "  # ends in a space that merges into the next word when joined
    assert tok(prompt + "the", add_special_tokens=False)["input_ids"][: len(encode_prompt(tok, prompt))] != encode_prompt(tok, prompt)
    prompt_ids, answer_ids = encode_pair(tok, prompt, "the")
    assert prompt_ids == encode_prompt(tok, prompt) and answer_ids == encode_answer(tok, "the")
    assert encode_pair(tok, prompt, "", eos=False)[1] == []


def test_bos_once_for_llama_never_for_chatml(llama_tokenizer, chatml_tokenizer) -> None:
    prompt = format_prompt(None, QUESTION, "paper")
    llama_ids = encode_prompt(llama_tokenizer, prompt) + encode_answer(llama_tokenizer, format_answer(ANSWER, "paper"))
    bos = llama_tokenizer.bos_token_id
    assert llama_ids[0] == bos and llama_ids.count(bos) == 1

    chatml_ids = encode_prompt(chatml_tokenizer, prompt) + encode_answer(chatml_tokenizer, format_answer(ANSWER, "paper"))
    assert chatml_tokenizer.bos_token_id is None
    assert chatml_tokenizer.convert_tokens_to_ids("<s>") not in chatml_ids


def test_prompt_already_holding_bos_text_gets_no_second_bos(llama_tokenizer) -> None:
    # Chat templates often write "<s>" themselves; encode_prompt must not add another.
    ids = encode_prompt(llama_tokenizer, "<s>### Question: hi\n ### Answer:")
    assert ids.count(llama_tokenizer.bos_token_id) == 1 and ids[0] == llama_tokenizer.bos_token_id


def test_tokenizer_that_appends_eos_gives_prompt_without_eos(llama_tokenizer) -> None:
    from tokenizers import processors

    tok = copy.deepcopy(llama_tokenizer)  # the fixture is session-wide: do not mutate it
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.bos_token_id), ("</s>", tok.eos_token_id)]
    )
    assert tok("hi")["input_ids"][-1] == tok.eos_token_id  # the setup really appends EOS
    prompt_ids = encode_prompt(tok, "### Question: hi\n ### Answer:")
    answer_ids = encode_answer(tok, " the")
    assert prompt_ids[0] == tok.bos_token_id and tok.eos_token_id not in prompt_ids
    assert answer_ids == [tok.convert_tokens_to_ids("Ġthe"), tok.eos_token_id]  # one EOS, no BOS


# ------------------------------------------------------------------------------------------ chat / plain
def test_chat_template_prompt_and_answer(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    prompt = format_prompt(tok, QUESTION, "chat")
    assert prompt == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.endswith("<|im_start|>assistant\n")
    answer = format_answer(ANSWER, "chat", prompt)
    assert answer == ANSWER  # no leading space after the newline
    prompt_ids, answer_ids = encode_prompt(tok, prompt), encode_answer(tok, answer)
    assert tok.decode(prompt_ids) == prompt
    # The <|im_end|> that closes the user turn is inside the prompt and is kept there.
    assert prompt_ids.count(tok.eos_token_id) == 1
    ids, labels = join_prompt_answer(prompt_ids, answer_ids, max_length=512)
    assert labels[: len(prompt_ids)] == [X] * len(prompt_ids)
    assert tok.decode(answer_tokens(labels)) == ANSWER + "<|im_end|>"


def test_chat_template_missing_is_a_user_error(llama_tokenizer) -> None:
    assert not getattr(llama_tokenizer, "chat_template", None)
    with pytest.raises(UserError, match="chat template"):
        format_prompt(llama_tokenizer, QUESTION, "chat")


def test_plain_template_and_unknown_template() -> None:
    assert format_prompt(None, "Alice was beginning", "plain") == "Alice was beginning"
    assert format_answer("to get tired", "plain", "Alice was beginning") == " to get tired"
    assert format_answer("to get tired", "plain", "Alice was beginning ") == "to get tired"
    with pytest.raises(UserError, match="xml"):
        format_prompt(None, QUESTION, "xml")


def test_tokenize_qa_matches_the_building_blocks(llama_tokenizer) -> None:
    tok = llama_tokenizer
    (tq,) = tokenize_qa(tok, [QAExample(QUESTION, ANSWER)], "paper")
    prompt = format_prompt(tok, QUESTION, "paper")
    assert tq == TokenizedQA(encode_prompt(tok, prompt), encode_answer(tok, " " + ANSWER))


# ------------------------------------------------------------------------------------------ truncation
PROMPT20 = list(range(100, 120))
ANSWER30 = list(range(200, 230))


def test_truncation_long_prompt_and_long_answer() -> None:
    # max 16: answer keeps max(16 - 20, 16 // 2) = 8 tokens (cut from the right),
    # prompt keeps 16 - 8 = 8 tokens cut from the LEFT (its end is the cue): 112..119.
    ids, labels = join_prompt_answer(PROMPT20, ANSWER30, max_length=16)
    assert ids == list(range(112, 120)) + list(range(200, 208))
    assert labels == [X] * 8 + list(range(200, 208))


def test_truncation_odd_max_length_keeps_half_for_the_answer() -> None:
    # max 15: answer keeps 15 // 2 = 7, prompt the last 8.
    ids, labels = join_prompt_answer(PROMPT20, ANSWER30, max_length=15)
    assert len(ids) == 15 and len(answer_tokens(labels)) == 7
    assert ids[:8] == list(range(112, 120))


def test_truncation_keeps_a_short_answer_whole() -> None:
    # Answer of 3 fits: kept whole; prompt keeps the last 16 - 3 = 13 tokens (107..119).
    ids, labels = join_prompt_answer(PROMPT20, [7, 8, 9], max_length=16)
    assert ids == list(range(107, 120)) + [7, 8, 9]
    assert labels == [X] * 13 + [7, 8, 9]


def test_truncation_short_prompt_gives_the_answer_the_rest() -> None:
    # Prompt 4 kept whole, the answer fills the other 12 positions.
    ids, labels = join_prompt_answer([1, 2, 3, 4], ANSWER30, max_length=16)
    assert ids == [1, 2, 3, 4] + list(range(200, 212))
    assert labels == [X] * 4 + list(range(200, 212))


def test_no_truncation_when_it_fits() -> None:
    assert join_prompt_answer([1, 2], [3, 4], max_length=8) == ([1, 2, 3, 4], [X, X, 3, 4])


@pytest.mark.parametrize("max_length", [8, 9, 24, 33])
def test_truncation_with_real_tokens(max_length: int, chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    long_q = " ".join(["What is the capital of France?"] * 10)
    long_a = " ".join(["the capital of France is Paris."] * 10)
    prompt_ids = encode_prompt(tok, format_prompt(tok, long_q, "paper"))
    answer_ids = encode_answer(tok, format_answer(long_a, "paper"))
    assert len(prompt_ids) > max_length and len(answer_ids) > max_length
    ids, labels = join_prompt_answer(prompt_ids, answer_ids, max_length)
    assert len(ids) == len(labels) <= max_length
    kept = answer_tokens(labels)
    assert len(kept) >= max_length // 2
    assert kept == answer_ids[: len(kept)]  # the answer is cut from the right
    assert ids[: len(ids) - len(kept)] == prompt_ids[len(prompt_ids) - (len(ids) - len(kept)) :]  # prompt from the left
    assert tok.decode(prompt_ids).endswith(tok.decode(ids[: len(ids) - len(kept)]))


def test_truncation_keeps_bos(llama_tokenizer) -> None:
    tok = llama_tokenizer
    prompt_ids = encode_prompt(tok, format_prompt(tok, " ".join([QUESTION] * 10), "paper"))
    answer_ids = encode_answer(tok, format_answer(ANSWER, "paper"))
    ids, labels = join_prompt_answer(prompt_ids, answer_ids, max_length=16, bos_id=tok.bos_token_id)
    assert ids[0] == tok.bos_token_id and len(ids) == 16
    assert ids[1 : 16 - len([x for x in labels if x != -100])] == prompt_ids[len(prompt_ids) - (15 - len([x for x in labels if x != -100])) :]


# ------------------------------------------------------------------------------------------ collate / pad
def test_collate_right_pads_with_masks() -> None:
    batch = collate([([5, 6, 7], [X, 6, 7]), ([8], [8])], pad_id=9)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[X, 6, 7], [8, X, X]]


def test_pad_id_of(chatml_tokenizer, llama_tokenizer) -> None:
    assert pad_id_of(chatml_tokenizer) == chatml_tokenizer.convert_tokens_to_ids("<pad>")
    assert llama_tokenizer.pad_token_id is None
    assert pad_id_of(llama_tokenizer) == llama_tokenizer.eos_token_id  # falls back to EOS

    class NoSpecials:
        pad_token_id = None
        eos_token_id = None

    assert pad_id_of(NoSpecials()) == 0


# ------------------------------------------------------------------------------------------ sampling
def test_sample_mismatch_shape_and_range() -> None:
    draws = sample_mismatch(num_forget=3, num_answers=50, k=4, seed=0, step=0)
    assert draws.shape == (3, 4)
    assert draws.min() >= 0 and draws.max() < 50


def test_sample_mismatch_rows_are_independent_draws() -> None:
    # With 1000 answers and K=5, identical rows would mean one draw shared by the batch.
    for step in range(5):
        draws = sample_mismatch(4, 1000, 5, seed=3, step=step)
        assert len({tuple(row) for row in draws}) == 4


def test_sample_mismatch_deterministic_per_seed_and_step() -> None:
    a = sample_mismatch(2, 100, 5, seed=1, step=7)
    np.testing.assert_array_equal(a, sample_mismatch(2, 100, 5, seed=1, step=7))
    assert not np.array_equal(a, sample_mismatch(2, 100, 5, seed=1, step=8))
    assert not np.array_equal(a, sample_mismatch(2, 100, 5, seed=2, step=7))


def test_sample_mismatch_distinct_within_row_when_enough_answers() -> None:
    for step in range(30):
        for row in sample_mismatch(3, 6, 5, seed=0, step=step):
            assert len(set(row.tolist())) == 5
        for row in sample_mismatch(2, 5, 5, seed=0, step=step):  # K == #answers: a permutation
            assert sorted(row.tolist()) == [0, 1, 2, 3, 4]


def test_sample_mismatch_with_replacement_when_too_few_answers() -> None:
    draws = sample_mismatch(3, 2, 5, seed=0, step=0)
    assert draws.shape == (3, 5)
    assert set(draws.ravel().tolist()) <= {0, 1}  # 5 draws from 2 answers: repeats are unavoidable


def test_indices_for_step_covers_each_example_once_per_epoch() -> None:
    # n=7, batch 3: steps 0..6 hold 21 positions = 3 full epochs.
    n, batch = 7, 3
    flat = [i for step in range(7) for i in indices_for_step(n, batch, step, seed=0, stream=1)]
    epochs = [flat[e * n : (e + 1) * n] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n))
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # reshuffled between epochs


def test_indices_for_step_deterministic_and_seed_dependent() -> None:
    first = [indices_for_step(20, 4, s, seed=0, stream=1) for s in range(5)]
    assert first == [indices_for_step(20, 4, s, seed=0, stream=1) for s in range(5)]
    assert first != [indices_for_step(20, 4, s, seed=1, stream=1) for s in range(5)]
    assert first != [indices_for_step(20, 4, s, seed=0, stream=2) for s in range(5)]  # independent streams


# ------------------------------------------------------------------------------------------ StepBatcher
FORGET = [QAExample(f"How do I pick lock {i}?", f"the pins {i} set.") for i in range(3)]
NORMAL = [QAExample(f"What is the capital of country {i}?", f"The capital is city {i}.") for i in range(6)]


def make_batcher(tok, **kwargs) -> StepBatcher:
    options = dict(batch_size=2, num_mismatch=3, max_length=64, pad_id=pad_id_of(tok), seed=5, mismatch_source="normal")
    options.update(kwargs)
    return StepBatcher(tokenize_qa(tok, FORGET, "paper"), tokenize_qa(tok, NORMAL, "paper"), **options)


def row_text(tok, batch: dict[str, torch.Tensor], row: int) -> tuple[str, str]:
    """(full text of the unpadded row, text of its answer labels)."""
    length = int(batch["attention_mask"][row].sum())
    ids = batch["input_ids"][row, :length].tolist()
    labels = batch["labels"][row].tolist()
    return tok.decode(ids), tok.decode(answer_tokens(labels))


def test_step_batch_groups_and_mismatch_rows(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    step_batch = make_batcher(tok)(0)
    # [forget (B=2); mismatch (B*K=6); normal (B=2)]
    assert step_batch.slices == {"forget": slice(0, 2), "mismatch": slice(2, 8), "normal": slice(8, 10)}
    batch = step_batch.batch
    assert batch["input_ids"].shape[0] == 10
    assert step_batch.num_tokens == int(batch["attention_mask"].sum())

    eos = tok.eos_token
    forget_prompts = []
    for row in range(2):
        text, answer = row_text(tok, batch, row)
        example = next(e for e in FORGET if text.startswith(f"### Question: {e.question}\n"))
        assert text == f"### Question: {example.question}\n ### Answer: {example.answer}{eos}"
        assert answer == f" {example.answer}{eos}"
        forget_prompts.append(f"### Question: {example.question}\n ### Answer:")
    normal_answers = {f" {e.answer}{eos}" for e in NORMAL}
    for k, row in enumerate(range(2, 8)):
        text, answer = row_text(tok, batch, row)
        # Row k belongs to forget example k // K: its prompt, and a NORMAL answer (never a forget answer).
        assert answer in normal_answers
        assert text == forget_prompts[k // 3] + answer
    for row in range(8, 10):
        text, answer = row_text(tok, batch, row)
        assert text.startswith("### Question: What is the capital of country") and answer in normal_answers
    # The padding is masked in the labels.
    assert (batch["labels"][batch["attention_mask"] == 0] == X).all()


def test_mismatch_pool_replaces_the_normal_answers_in_the_mismatch_group_only(chatml_tokenizer) -> None:
    """mismatch_pool: the mismatch rows pair each forget prompt with pool answers (drawn as from the normal
    answers, by index); the forget and normal groups are the batches the paper's draw makes."""
    tok = chatml_tokenizer
    pool = [QAExample(f"Prose prefix {i}.", f"Prose continuation {i}.") for i in range(4)]
    pool_t = tokenize_qa(tok, pool, "paper")
    step = 3
    plain, pooled = make_batcher(tok)(step), make_batcher(tok, mismatch_pool=[ex.answer_ids for ex in pool_t])(step)
    assert pooled.slices == plain.slices
    forget_t = tokenize_qa(tok, FORGET, "paper")
    forget_idx = indices_for_step(3, 2, step, seed=5, stream=1)
    draws = sample_mismatch(2, 4, 3, seed=5, step=step)  # drawn over the pool's 4 answers
    eos = tok.eos_token
    for k, row in enumerate(range(2, 8)):
        expected = forget_t[forget_idx[k // 3]].prompt_ids + pool_t[draws[k // 3][k % 3]].answer_ids
        assert pooled.batch["input_ids"][row, : len(expected)].tolist() == expected
        assert row_text(tok, pooled.batch, row)[1] in {f" {e.answer}{eos}" for e in pool}
    for name in ("forget", "normal"):
        for row in range(pooled.slices[name].start, pooled.slices[name].stop):
            assert row_text(tok, pooled.batch, row) == row_text(tok, plain.batch, row)
    # With a pool, the mismatch group needs no normal data; KL still does.
    StepBatcher(forget_t, [], batch_size=2, num_mismatch=3, max_length=64, pad_id=0, seed=0, mismatch_source="normal",
                use_normal=False, mismatch_pool=[ex.answer_ids for ex in pool_t])
    with pytest.raises(UserError, match="normal set is empty"):
        StepBatcher(forget_t, [], batch_size=2, num_mismatch=3, max_length=64, pad_id=0, seed=0, mismatch_source="normal",
                    mismatch_pool=[ex.answer_ids for ex in pool_t])


def test_step_batch_matches_index_functions(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    forget_t, normal_t = tokenize_qa(tok, FORGET, "paper"), tokenize_qa(tok, NORMAL, "paper")
    step = 4
    batch = make_batcher(tok)(step).batch
    forget_idx = indices_for_step(3, 2, step, seed=5, stream=1)
    draws = sample_mismatch(2, 6, 3, seed=5, step=step)
    expected_rows = [forget_t[i].prompt_ids + forget_t[i].answer_ids for i in forget_idx]
    expected_rows += [forget_t[i].prompt_ids + normal_t[j].answer_ids for r, i in enumerate(forget_idx) for j in draws[r]]
    for row, ids in enumerate(expected_rows):
        assert batch["input_ids"][row, : len(ids)].tolist() == ids


def test_step_batch_is_deterministic_for_resume(chatml_tokenizer) -> None:
    a = make_batcher(chatml_tokenizer)(3)
    b = make_batcher(chatml_tokenizer)(3)  # a fresh batcher: as after a resume
    for key in a.batch:
        assert torch.equal(a.batch[key], b.batch[key])
    assert make_batcher(chatml_tokenizer)(4).batch["input_ids"].tolist() != a.batch["input_ids"].tolist()


def test_step_batch_templated_uses_the_reply_ids(llama_tokenizer) -> None:
    tok = llama_tokenizer
    reply_ids = encode_answer(tok, format_answer("I can't help with that.", "paper"))
    step_batch = make_batcher(tok, mismatch_source="template", template_reply_ids=reply_ids)(1)
    assert step_batch.slices == {"forget": slice(0, 2), "mismatch": slice(2, 4), "normal": slice(4, 6)}
    for row in (2, 3):
        assert answer_tokens(step_batch.batch["labels"][row].tolist()) == reply_ids
        text, answer = row_text(tok, step_batch.batch, row)
        assert answer == " I can't help with that.</s>"
        assert text.startswith("<s>### Question: How do I pick lock")
    # No pad token: padding uses EOS and is masked.
    assert pad_id_of(tok) == tok.eos_token_id


def test_step_batch_without_optional_groups(chatml_tokenizer) -> None:
    step_batch = make_batcher(chatml_tokenizer, mismatch_source=None, use_normal=False)(0)
    assert step_batch.slices == {"forget": slice(0, 2)}
    assert step_batch.batch["input_ids"].shape[0] == 2


def test_step_batcher_rejects_empty_sets(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    normal = tokenize_qa(tok, NORMAL, "paper")
    with pytest.raises(UserError, match="forget set is empty"):
        StepBatcher([], normal, batch_size=2, num_mismatch=3, max_length=64, pad_id=0, seed=0, mismatch_source="normal")
    with pytest.raises(UserError, match="normal set is empty"):
        StepBatcher(
            tokenize_qa(tok, FORGET, "paper"), [], batch_size=2, num_mismatch=3, max_length=64, pad_id=0, seed=0,
            mismatch_source="normal",
        )


# ------------------------------------------------------------------------------------------ loading
def test_load_qa_jsonl(qa_files) -> None:
    forget, normal = qa_files
    examples = load_qa(str(forget))
    assert len(examples) == 6
    assert examples[0] == QAExample("How do I pick lock 0?", "Insert a tension wrench and rake pin 0.")
    assert examples[5].answer == "Insert a tension wrench and rake pin 5."
    assert len(load_qa(str(normal), limit=3)) == 3
    assert load_qa(str(normal), limit=3)[2] == QAExample("What is the capital of country 2?", "The capital is city 2.")


def test_load_qa_csv_and_parquet_with_column_mapping(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame({"prompt": ["  Q one?", "Q two?"], "response": ["A one.  ", "A, \"two\"."], "extra": [1, 2]})
    expected = [QAExample("Q one?", "A one."), QAExample("Q two?", 'A, "two".')]  # whitespace stripped
    csv_path, parquet_path = tmp_path / "data.csv", tmp_path / "data.parquet"
    frame.to_csv(csv_path, index=False)
    frame.to_parquet(parquet_path)
    for path in (csv_path, parquet_path):
        assert load_qa(str(path), question_column="prompt", answer_column="response") == expected
        rows = load_rows(str(path))
        # CSV has no types: every cell is read as the text it holds; Parquet keeps its column types.
        assert [r["extra"] for r in rows] == (["1", "2"] if path.suffix == ".csv" else [1, 2])


def test_load_qa_json_list(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]))
    assert load_qa(str(path)) == [QAExample("q1", "a1"), QAExample("q2", "a2")]


def test_load_qa_joins_sources_with_plus_interleaved(qa_files) -> None:
    forget, normal = qa_files
    joined = load_qa(f"{forget}+{normal}", limit=4)
    assert joined == [load_qa(str(forget))[0], load_qa(str(normal))[0], load_qa(str(forget))[1], load_qa(str(normal))[1]]
    assert len(load_qa(f"{forget}+{normal}")) == len(load_qa(str(forget))) + len(load_qa(str(normal)))
    with pytest.raises(UserError, match="empty part"):
        load_qa(f"{forget}+")


def test_load_qa_prompt_only_rows_when_answers_are_generated() -> None:
    with pytest.raises(UserError, match="no column 'answer'"):
        load_qa("toxicchat_benign")
    prompts = load_qa("alpaca_instructions+toxicchat_benign", limit=4, need_answers=False)
    assert [bool(e.answer) for e in prompts] == [True, False, True, False]
    assert all(e.question for e in prompts)


def test_load_builtin_truthfulqa_train() -> None:
    lines = [json.loads(line) for line in builtin_dataset_path("truthfulqa_train").read_text().splitlines() if line.strip()]
    examples = load_qa("truthfulqa_train")
    assert len(examples) == len(lines) > 100
    assert examples[0] == QAExample(lines[0]["question"].strip(), lines[0]["answer"].strip())
    assert len(load_qa("truthfulqa_train", limit=5)) == 5


def test_malformed_jsonl_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n\n{"question": "q", "answer": \n')  # line 3 is broken
    with pytest.raises(UserError, match=r"line 3\b"):
        load_qa(str(path))
    path.write_text('{"question": "q", "answer": "a"}\n["not", "an", "object"]\n')
    with pytest.raises(UserError, match=r"line 2\b"):
        load_qa(str(path))


def test_missing_column_names_the_column(qa_files) -> None:
    forget, _ = qa_files
    with pytest.raises(UserError, match="'response'"):
        load_qa(str(forget), answer_column="response")
    with pytest.raises(UserError, match="'prompt'"):
        load_qa(str(forget), question_column="prompt")


def test_empty_answer_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    rows = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "   "}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"row 2\b"):
        load_qa(str(path))
    csv_path = tmp_path / "empty.csv"
    csv_path.write_text("question,answer\nq1,a1\nq2,a2\nq3,\n")
    with pytest.raises(UserError, match=r"row 3\b"):
        load_qa(str(csv_path))


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_qa(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="not found"):
        load_rows(str(tmp_path / "nope.csv"))
    with pytest.raises(UserError, match="no_such_dataset"):
        load_qa("no_such_dataset")


def test_empty_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(UserError, match="no rows"):
        load_qa(str(path))


def test_csv_text_is_read_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "numbers.csv"
    path.write_text("question,answer\nagent?,007\nprice?,1.50\n")
    assert [e.answer for e in load_qa(str(path))] == ["007", "1.50"]


def test_parquet_null_answer_is_an_empty_answer(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "nulls.parquet"
    pd.DataFrame({"question": ["q1", "q2"], "answer": ["a1", None]}).to_parquet(path)
    with pytest.raises(UserError, match=r"row 2\b"):
        load_qa(str(path))


@pytest.mark.parametrize("cell, kind", [("null", "null"), ("17", "a number (17)"), ("true", "a boolean (true)"),
                                        ('["q"]', "a list"), ('{"q": 1}', "an object")])
@pytest.mark.parametrize("column", ["question", "answer"])
def test_a_non_text_question_or_answer_names_file_row_and_column(tmp_path: Path, column: str, cell: str, kind: str) -> None:
    """Stringified, a null question trained as "None" (or an empty prompt) and a number as its digits."""
    path = tmp_path / "rows.jsonl"
    good = '{"question": "q1", "answer": "a1"}\n'
    bad = {"question": "q2", "answer": "a2"}
    line = json.dumps(bad).replace(f'"{bad[column]}"', cell)
    path.write_text(good + good + line + "\n")
    with pytest.raises(UserError) as info:
        load_qa(str(path))
    message = str(info.value)
    assert message == f"{path}: row 3, column '{column}' is {kind}, not text; give a string there or remove the row"
    assert "\n" not in message


def test_a_null_in_a_parquet_question_or_a_json_list_names_the_row(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "nulls.parquet"
    pd.DataFrame({"question": ["q1", None], "answer": ["a1", "a2"]}).to_parquet(path)
    with pytest.raises(UserError, match=r"row 2, column 'question' is null"):
        load_qa(str(path))
    path = tmp_path / "numbers.parquet"
    pd.DataFrame({"question": ["q1", "q2"], "answer": [1, 2]}).to_parquet(path)
    with pytest.raises(UserError, match=r"row 1, column 'answer' is a number \(1\)"):
        load_qa(str(path))
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": None}]))
    with pytest.raises(UserError, match=r"row 2, column 'answer' is null"):
        load_qa(str(path))


def test_a_non_text_row_is_named_by_its_place_in_the_file_when_filtered(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"question": "q1", "answer": "a1", "keep": "no"}, {"question": "q2", "answer": "a2", "keep": "yes"},
            {"question": None, "answer": "a3", "keep": "yes"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"row 3, column 'question' is null"):
        load_qa(str(path), where="keep=yes")


def test_prompt_only_rows_take_a_null_answer_as_none_but_not_a_null_question(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "q1", "answer": null}\n{"question": "q2"}\n')
    assert load_qa(str(path), need_answers=False) == [QAExample("q1", ""), QAExample("q2", "")]
    path.write_text('{"question": "q1", "answer": null}\n{"question": null}\n')
    with pytest.raises(UserError, match=r"row 2, column 'question' is null"):
        load_qa(str(path), need_answers=False)
    path.write_text('{"question": "q1", "answer": "a", "better": 5}\n')
    with pytest.raises(UserError, match=r"row 1, column 'better' is a number"):
        load_qa(str(path), preferred_column="better")


# ------------------------------------------------------------------------------ hub names, no network
class _Loader:
    """Stands in for AutoModelForCausalLM: records how it was asked, finds only ``cached/model`` in the cache."""

    calls: list = []

    @classmethod
    def from_pretrained(cls, name, **kwargs):
        cls.calls.append((name, kwargs))
        if kwargs.get("local_files_only") and name != "cached/model":
            raise OSError("not in the cache")
        return f"loaded {name}"


def test_hub_unreachable_reads_only_the_cache_and_names_a_missing_model_in_one_line(monkeypatch) -> None:
    from unlearnkit import hub

    _Loader.calls = []
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    assert hub.from_pretrained(_Loader, "cached/model") == "loaded cached/model"
    assert _Loader.calls == [("cached/model", {"local_files_only": True})]
    with pytest.raises(UserError) as info:
        hub.from_pretrained(_Loader, "nosuch/model", revision="main")
    assert str(info.value) == ("model 'nosuch/model' not found locally and the hub is unreachable: "
                               "pass a local folder or check the name")
    with pytest.raises(UserError, match=r"model folder '\./nowhere/model' not found; check the path"):
        hub.from_pretrained(_Loader, "./nowhere/model")
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)  # online: the libraries' own path, untouched
    _Loader.calls = []
    assert hub.from_pretrained(_Loader, "owner/model", revision="v1") == "loaded owner/model"
    assert _Loader.calls == [("owner/model", {"revision": "v1"})]


def test_hub_reachable_is_false_offline_or_when_the_endpoint_does_not_answer(monkeypatch) -> None:
    import huggingface_hub

    from unlearnkit import hub

    class Session:
        def head(self, url, timeout):
            raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Session())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub.hub_reachable.cache_clear()
    try:
        assert hub.hub_reachable() is False
        hub.hub_reachable.cache_clear()
        monkeypatch.setattr(Session, "head", lambda self, url, timeout: None)
        assert hub.hub_reachable() is True
        hub.hub_reachable.cache_clear()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert hub.hub_reachable() is False
    finally:
        hub.hub_reachable.cache_clear()


def test_hub_dataset_unreachable_reads_the_cache_offline_or_names_it(monkeypatch) -> None:
    import datasets
    import datasets.config

    from unlearnkit import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    seen = []

    def load_dataset(name, subset, split):
        seen.append(datasets.config.HF_HUB_OFFLINE)  # no request may be made: offline while it runs
        if name == "cached/data":
            return [{"question": "q", "answer": "a"}]
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    before = datasets.config.HF_HUB_OFFLINE
    assert load_rows("cached/data") == [{"question": "q", "answer": "a"}]
    with pytest.raises(UserError) as info:
        load_rows("hf:nosuch/data:subset")
    assert str(info.value) == ("dataset 'nosuch/data' not found locally and the hub is unreachable: "
                               "pass a local folder or check the name")
    assert seen == [True, True] and datasets.config.HF_HUB_OFFLINE == before
