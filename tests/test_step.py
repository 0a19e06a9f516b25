"""The packed step engine against an oracle: the plain per-group, unpacked, full-logits computation.

Exactness first: forget_nll, mismatch_nll, kl and the loss match the oracle to 1e-5 (fp32) and every
parameter gradient to 1e-4 relative, on tiny random Llama- and OPT-style models (OPT with dropout in
its config), paper and chat templates, K=1 and K=5, truncated sequences, the templated method, LoRA
and full finetuning; and no packed position attends across sequences.
"""

from __future__ import annotations

import pytest
import torch

from unlearnkit.batching import pack_step, padded_positions
from unlearnkit.config import MethodConfig, ModelConfig
from unlearnkit.data import QAExample, StepBatcher, encode_pair, format_answer, format_prompt, pad_id_of, tokenize_qa
from unlearnkit.losses import answer_nll, forward_kl, next_token_mask
from unlearnkit.methods import METHODS, StepNeeds, StepTerms
from unlearnkit.modeling import Reference, add_lora, disable_dropout
from unlearnkit.step import compute_terms, hidden_states, set_attention

FORGET = [QAExample(f"How do I pick lock number {i}? Tell me {'step by step ' * (i % 3)}", f"Insert a tension wrench and rake pin {i}." + " Then turn it." * (i % 4)) for i in range(5)]
NORMAL = [QAExample(f"What is the capital of country {i}?", f"The capital is city {i}." + " It is big." * (i % 3)) for i in range(7)]


def tiny_model(arch: str, vocab: int, seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    else:  # OPT as the paper used it: learned positions, dropout 0.1 in its config, tied head
        config = OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=256, word_embed_proj_dim=32, dropout=0.1, attention_dropout=0.1)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.train()
    return model


def make_step(tokenizer, template: str, k: int, max_length: int, method: str, step: int = 0):
    source = METHODS[method].mismatch_source
    template_ids = None
    if source == "template":
        prompt = format_prompt(tokenizer, FORGET[0].question, template)
        template_ids = encode_pair(tokenizer, prompt, format_answer("I can't help with that.", template, prompt))[1]
    batcher = StepBatcher(tokenize_qa(tokenizer, FORGET, template), tokenize_qa(tokenizer, NORMAL, template), batch_size=2,
                          num_mismatch=k, max_length=max_length, pad_id=pad_id_of(tokenizer), seed=3, mismatch_source=source,
                          template_reply_ids=template_ids, use_normal=METHODS[method].uses_kl, bos_id=tokenizer.bos_token_id)
    return batcher(step)


def oracle_terms(model, reference, step) -> StepTerms:
    """Each group on its own, right-padded, full [N, T, V] logits through the model's own forward."""
    def group(name):
        rows = step.slices[name]
        sub = type(step)(step.sequences[rows], {name: slice(0, rows.stop - rows.start)}, step.pad_id).batch
        return sub

    terms = StepTerms(forget_nll=torch.zeros(0))
    for name in ("forget", "mismatch"):
        if name in step.slices:
            b = group(name)
            value = answer_nll(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
            setattr(terms, f"{name}_nll", value)
    if "normal" in step.slices and reference is not None:
        b = group("normal")
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        ref = reference.logits(model, b["input_ids"], b["attention_mask"])
        terms.kl = forward_kl(logits, ref, next_token_mask(b["attention_mask"]))
    return terms


def perturb(model, lora: bool, seed: int = 1) -> None:
    """Move the policy away from the reference so the KL and its gradient are not zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and (not lora or "lora_B" in name):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def build(arch, tokenizer, lora, method, attention="sdpa"):
    model = tiny_model(arch, len(tokenizer))
    if lora:
        model = add_lora(model, ModelConfig(lora=True, lora_dropout=0.1))
    disable_dropout(model)
    set_attention(model, attention)
    reference = Reference(model, lora=lora) if METHODS[method].uses_kl else None
    perturb(model, lora)
    return model, reference


CASES = [
    # arch, template, K, max_length, method, lora
    ("llama", "paper", 5, 128, "ga_mismatch_kl", False),
    ("llama", "chat", 1, 128, "ga_mismatch_kl", True),
    ("llama", "paper", 5, 20, "ga_mismatch_kl", False),  # truncated prompts and answers
    ("llama", "chat", 1, 128, "templated", False),
    ("opt", "paper", 5, 128, "ga_mismatch_kl", False),
    ("opt", "chat", 5, 24, "ga_mismatch_kl", True),
    ("opt", "paper", 1, 128, "templated", True),
    ("llama", "paper", 2, 128, "ga", False),
    ("opt", "chat", 2, 128, "ga_kl", False),
]


@pytest.mark.parametrize("arch,template,k,max_length,method,lora", CASES)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_step_matches_oracle(arch, template, k, max_length, method, lora, attention, llama_tokenizer, chatml_tokenizer):
    tokenizer = chatml_tokenizer if template == "chat" else llama_tokenizer  # chat: ChatML; paper: BOS-adding Llama style
    if attention == "eager" and (lora or k == 1):
        pytest.skip("eager path: checked on the full-finetuning cases")
    model, reference = build(arch, tokenizer, lora, method, attention)
    config = MethodConfig(w_forget=0.5, w_mismatch=1.0, w_normal=1.0)
    combine = METHODS[method].combine
    for step_number in (0, 1):
        step = make_step(tokenizer, template, k, max_length, method, step_number)
        expected = oracle_terms(model, reference, step)
        expected_loss = combine(expected, config)
        expected_loss.backward()
        expected_grads = grads(model)
        terms = compute_terms(model, reference, step, METHODS[method].step_needs, row_tokens=64)
        loss = combine(terms, config)
        loss.backward()
        got_grads = grads(model)
        torch.testing.assert_close(terms.forget_nll, expected.forget_nll, atol=1e-5, rtol=1e-5)
        for name in ("mismatch_nll", "kl"):
            want = getattr(expected, name)
            assert (getattr(terms, name) is None) == (want is None), name
            if want is not None:
                torch.testing.assert_close(getattr(terms, name), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
        assert got_grads.keys() == expected_grads.keys() and got_grads
        # Relative to each parameter's largest gradient; a parameter whose true gradient is 0 (attention
        # key biases: softmax ignores a shift) is compared with a small fraction of the largest gradient.
        floor = 1e-3 * max(float(g.abs().max()) for g in expected_grads.values())
        for name, want in expected_grads.items():
            scale = want.abs().max().clamp(min=floor)
            assert float((got_grads[name] - want).abs().max() / scale) < 1e-4, name


def test_chunked_head_equals_one_chunk(llama_tokenizer):
    model, reference = build("llama", llama_tokenizer, False, "ga_mismatch_kl")
    step = make_step(llama_tokenizer, "paper", 5, 128, "ga_mismatch_kl")
    needs = METHODS["ga_mismatch_kl"].step_needs
    whole = compute_terms(model, reference, step, needs)
    METHODS["ga_mismatch_kl"].combine(whole, MethodConfig()).backward()
    g_whole = grads(model)
    chunked = compute_terms(model, reference, step, needs, chunk_tokens=7)  # many checkpointed chunks
    METHODS["ga_mismatch_kl"].combine(chunked, MethodConfig()).backward()
    g_chunked = grads(model)
    for name in ("forget_nll", "mismatch_nll", "kl"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), atol=1e-6, rtol=1e-6)
    for name, want in g_whole.items():
        torch.testing.assert_close(g_chunked[name], want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_no_position_attends_across_sequences(arch, attention, llama_tokenizer, chatml_tokenizer):
    """Perturb one packed unit's tokens: every other unit's hidden states stay bit-for-bit the same."""
    tokenizer = llama_tokenizer if arch == "llama" else chatml_tokenizer
    model, _ = build(arch, tokenizer, False, "ga_mismatch", attention)
    step = make_step(tokenizer, "paper", 3, 128, "ga_mismatch_kl")
    packed = pack_step(step, ["forget", "mismatch", "normal"], shared=("forget", "mismatch"), row_tokens=10_000)
    assert packed.input_ids.shape[0] == 1  # everything in one row: the hardest case for leaks
    with torch.no_grad():
        before = hidden_states(model, packed)
        victim = int(packed.unit[0, 0])
        changed = packed.unit.view(-1) == victim
        packed.input_ids.view(-1)[changed] = (packed.input_ids.view(-1)[changed] + 1) % len(tokenizer)
        after = hidden_states(model, packed)
    assert not torch.equal(before[changed], after[changed])
    assert torch.equal(before[~changed], after[~changed])


def test_answers_sharing_a_prompt_do_not_see_each_other(llama_tokenizer):
    """Within one prompt tree, changing one answer leaves the prompt and the sibling answers unchanged."""
    model, _ = build("llama", llama_tokenizer, False, "ga_mismatch")
    step = make_step(llama_tokenizer, "paper", 3, 128, "ga_mismatch")
    packed = pack_step(step, ["forget", "mismatch"], shared=("forget", "mismatch"))
    with torch.no_grad():
        before = hidden_states(model, packed)
        branch = (packed.branch.view(-1) == 2) & (packed.unit.view(-1) == 0)
        assert branch.any()
        packed.input_ids.view(-1)[branch] = (packed.input_ids.view(-1)[branch] + 1) % len(llama_tokenizer)
        after = hidden_states(model, packed)
    assert torch.equal(before[~branch], after[~branch])


def test_packing_computes_each_forget_prompt_once(chatml_tokenizer):
    step = make_step(chatml_tokenizer, "paper", 5, 128, "ga_mismatch_kl")
    groups = ["forget", "mismatch", "normal"]
    packed = pack_step(step, groups, shared=("forget", "mismatch"))
    # 2 forget prompts + their 2*(1+5) answers + 2 normal sequences, no padding between them.
    prompts = sum(len(ids) - sum(1 for x in labels if x != -100) for ids, labels in step.sequences[step.slices["forget"]])
    answers = sum(sum(1 for x in labels if x != -100) for ids, labels in step.sequences[: step.slices["mismatch"].stop])
    normal = sum(len(ids) for ids, _ in step.sequences[step.slices["normal"]])
    assert packed.num_positions == prompts + answers + normal
    assert packed.num_positions < step.num_tokens < padded_positions(step, groups)


def test_rows_are_balanced_when_one_full_row_would_leave_a_short_one():
    from unlearnkit.batching import _first_fit_decreasing

    # 723 tokens into 512-token rows: [512-ish, short] padded to 2 x 473; balanced rows need 2 x ~362.
    lengths = [300, 250, 173]
    _, greedy = _first_fit_decreasing(lengths, 512)
    _, balanced = _first_fit_decreasing(lengths, 362)
    assert len(greedy) * max(greedy) == 946 and len(balanced) * max(balanced) < 946
    where, fill = _first_fit_decreasing(lengths, 362)
    assert sorted(where) == [0, 1, 2] and sum(fill) == sum(lengths)  # every unit placed, once


def test_packed_layout_never_computes_more_positions_than_greedy_rows(chatml_tokenizer):
    for template, k in (("paper", 5), ("chat", 2)):
        step = make_step(chatml_tokenizer, template, k, 96, "ga_mismatch_kl")
        packed = pack_step(step, ["forget", "mismatch", "normal"], shared=("forget", "mismatch"), row_tokens=64)
        assert packed.input_ids.numel() <= padded_positions(step, ["forget", "mismatch", "normal"])


def test_opt_dropout_is_off_so_kl_starts_at_zero(chatml_tokenizer):
    model = tiny_model("opt", len(chatml_tokenizer))
    disable_dropout(model)
    reference = Reference(model, lora=False)
    step = make_step(chatml_tokenizer, "paper", 2, 128, "ga_mismatch_kl")
    terms = compute_terms(model, reference, step, METHODS["ga_mismatch_kl"].step_needs)
    assert float(terms.kl.detach()) < 1e-6
    again = compute_terms(model, reference, step, METHODS["ga_mismatch_kl"].step_needs)
    assert torch.equal(terms.forget_nll, again.forget_nll)  # deterministic: no dropout noise


def test_reference_nll_needs(chatml_tokenizer):
    """A method may ask for the original model's answer NLL (NPO/DPO-style): with an untouched policy it equals the policy's."""
    model = tiny_model("llama", len(chatml_tokenizer))
    reference = Reference(model, lora=False)
    step = make_step(chatml_tokenizer, "paper", 2, 128, "ga_mismatch_kl")
    needs = StepNeeds(nll_groups=("forget", "normal"), reference_nll_groups=("forget",))
    terms = compute_terms(model, reference, step, needs)
    torch.testing.assert_close(terms.reference_nll_sum["forget"], terms.nll_sum["forget"].detach(), atol=1e-5, rtol=1e-5)
    assert terms.nll_sum["normal"].shape == (2,) and (terms.tokens["normal"] > 0).all()


def test_flash_attention_is_refused_not_silently_leaky(chatml_tokenizer):
    from unlearnkit.errors import UserError

    model = tiny_model("llama", len(chatml_tokenizer))
    model.config._attn_implementation = "flash_attention_2"
    step = make_step(chatml_tokenizer, "paper", 1, 128, "ga")
    with pytest.raises(UserError, match="cannot confine packed sequences"):
        compute_terms(model, None, step, METHODS["ga"].step_needs)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_hidden_states_at_a_layer_match_the_oracle(arch, llama_tokenizer):
    """RMU-style needs: layer-L hidden states of forget answers and normal tokens (policy with gradient,
    original model on normal) equal the plain per-group forward's, and so do their gradients."""
    model, reference = build(arch, llama_tokenizer, False, "ga_mismatch_kl")
    step = make_step(llama_tokenizer, "paper", 2, 128, "ga_mismatch_kl")
    needs = StepNeeds(nll_groups=("forget",), hidden_groups=("forget", "normal"))
    layer = 1
    terms = compute_terms(model, reference, step, needs, hidden_layer=layer)
    loss = sum((terms.hidden[g] ** 2).sum() for g in ("forget", "normal")) + terms.forget_nll.sum()
    loss.backward()
    got_grads = grads(model)
    expected_loss = 0
    for group in ("forget", "normal"):
        rows = step.slices[group]
        b = type(step)(step.sequences[rows], {group: slice(0, rows.stop - rows.start)}, step.pad_id).batch
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        mask = (b["labels"] != -100) if group == "forget" else b["attention_mask"].bool()
        want = out.hidden_states[layer] * mask[..., None]
        assert torch.equal(terms.hidden_mask[group], mask)
        torch.testing.assert_close(terms.hidden[group], want.detach(), atol=1e-5, rtol=1e-5)
        expected_loss = expected_loss + (want ** 2).sum()
        if group == "forget":
            expected_loss = expected_loss + answer_nll(out.logits, b["labels"]).sum()
        else:
            with torch.no_grad(), reference.mode(model) as original:
                ref = original(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True).hidden_states[layer]
            torch.testing.assert_close(terms.reference_hidden["normal"], ref * mask[..., None], atol=1e-5, rtol=1e-5)
    expected_loss.backward()
    expected_grads = grads(model)
    floor = 1e-3 * max(float(g.abs().max()) for g in expected_grads.values())
    for name, want in expected_grads.items():
        assert float((got_grads[name] - want).abs().max() / want.abs().max().clamp(min=floor)) < 1e-4, name


# ------------------------------------------------------------------------------------------- the field's methods
def make_method_step(tokenizer, template: str, method: str, config: MethodConfig, step: int = 0):
    """A step built as train.prepare_data builds it for ``method``: its (regularizer-resolved) needs decide the
    groups; the preferred group holds a drawn refusal (idk_*) or the forget example's own alternative (dpo)."""
    from unlearnkit.methods import REFUSALS, resolve_needs

    needs = resolve_needs(METHODS[method], config)
    forget = [QAExample(ex.question, ex.answer, preferred=f"I won't explain lock {i}.") for i, ex in enumerate(FORGET)]
    prompt = format_prompt(tokenizer, forget[0].question, template)
    refusals = [encode_pair(tokenizer, prompt, format_answer(r, template, prompt))[1] for r in REFUSALS]
    batcher = StepBatcher(tokenize_qa(tokenizer, forget, template), tokenize_qa(tokenizer, NORMAL, template), batch_size=3,
                          num_mismatch=1, max_length=128, pad_id=pad_id_of(tokenizer), seed=3, mismatch_source=needs.mismatch,
                          use_normal=needs.kl or needs.retain_nll or needs.hidden_states, bos_id=tokenizer.bos_token_id,
                          preferred_source=needs.preferred, refusal_ids=refusals)
    return batcher(step), needs


def method_oracle_terms(model, reference, step, needs, hidden_layer) -> StepTerms:
    """The field's terms group by group, right-padded, through the model's own forward (no packing)."""
    from unlearnkit.losses import answer_nll_sum

    def group(name):
        rows = step.slices[name]
        return type(step)(step.sequences[rows], {name: slice(0, rows.stop - rows.start)}, step.pad_id).batch

    terms = StepTerms(forget_nll=torch.zeros(0))
    for name in needs.nll_groups:
        b = group(name)
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=hidden_layer is not None)
        terms.nll_sum[name], terms.tokens[name] = answer_nll_sum(out.logits, b["labels"])
    terms.forget_nll = terms.mean_nll("forget")
    for name in needs.reference_nll_groups:
        b = group(name)
        terms.reference_nll_sum[name] = answer_nll_sum(reference.logits(model, b["input_ids"], b["attention_mask"]), b["labels"])[0]
    if needs.kl_group is not None:
        b = group(needs.kl_group)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        terms.kl = forward_kl(logits, reference.logits(model, b["input_ids"], b["attention_mask"]), next_token_mask(b["attention_mask"]))
    for name in needs.hidden_groups:
        b = group(name)
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        mask = (b["labels"] != -100) if name != "normal" else b["attention_mask"].bool()
        terms.hidden[name], terms.hidden_mask[name] = out.hidden_states[hidden_layer] * mask[..., None], mask
        if name == "normal":
            with torch.no_grad(), reference.mode(model) as original:
                ref = original(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
            terms.reference_hidden[name] = ref.hidden_states[hidden_layer] * mask[..., None]
    return terms


FIELD_CASES = [
    # method, regularizer, lora, template
    ("grad_diff", "auto", False, "paper"),
    ("npo", "auto", False, "paper"),      # reference NLL of the forget answers + retain NLL
    ("npo", "kl", True, "chat"),          # reference NLL and KL from the adapter-free model
    ("simnpo", "auto", False, "chat"),
    ("idk_nll", "auto", False, "paper"),  # preferred group: drawn refusals sharing the forget prompts
    ("idk_dpo", "auto", True, "chat"),    # reference NLL of forget and preferred answers
    ("dpo", "auto", False, "paper"),      # preferred group from the forget set's own column
    ("rmu", "auto", False, "paper"),      # hidden states at rmu_layer: forget answers, normal tokens, reference on normal
    ("rmu", "auto", False, "chat"),
]


@pytest.mark.parametrize("method,regularizer,lora,template", FIELD_CASES)
def test_field_methods_packed_step_matches_oracle(method, regularizer, lora, template, llama_tokenizer, chatml_tokenizer):
    """Every field method through the packed step (its own needs converted to StepNeeds, train's hidden-layer
    index) gives the oracle's terms, loss, logged loss parts and gradients; the policy is perturbed so that
    reference NLLs, KL and reference hidden states differ from the policy's."""
    from unlearnkit.train import hidden_layer_of

    tokenizer = chatml_tokenizer if template == "chat" else llama_tokenizer
    config = MethodConfig(name=method, regularizer=regularizer, rmu_layer=0, rmu_coeff=2.0, rmu_alpha=10.0, simnpo_beta=0.5,
                          npo_beta=0.5, dpo_beta=0.5, w_retain=0.7, w_normal=1.3)
    model = tiny_model("llama", len(tokenizer))
    if lora:
        model = add_lora(model, ModelConfig(lora=True))
    disable_dropout(model)
    set_attention(model, "sdpa")
    step, needs = make_method_step(tokenizer, template, method, config)
    reference = Reference(model, lora=lora) if needs.reference else None
    perturb(model, lora)
    layer = hidden_layer_of(config, needs)
    assert (layer == 1) is (method == "rmu")  # the output of decoder layer rmu_layer=0 (hidden_states[0] = embeddings)
    combine = METHODS[method].combine

    expected = method_oracle_terms(model, reference, step, needs.step_needs, layer)
    expected_loss = combine(expected, config)
    expected_loss.backward()
    expected_grads = grads(model)
    terms = compute_terms(model, reference, step, needs.step_needs, row_tokens=64, hidden_layer=layer)
    loss = combine(terms, config)
    loss.backward()
    got_grads = grads(model)

    torch.testing.assert_close(terms.forget_nll, expected.forget_nll, atol=1e-5, rtol=1e-5)
    for field_name in ("nll_sum", "tokens", "reference_nll_sum", "hidden", "hidden_mask", "reference_hidden"):
        got, want = getattr(terms, field_name), getattr(expected, field_name)
        assert got.keys() == want.keys(), field_name
        for g in want:
            if field_name == "hidden_mask":
                assert torch.equal(got[g], want[g]), g
            else:
                torch.testing.assert_close(got[g].detach(), want[g].detach(), atol=1e-5, rtol=1e-5, check_dtype=False)
    assert (terms.kl is None) == (expected.kl is None)
    if expected.kl is not None:
        assert float(expected.kl.detach()) > 1e-6
        torch.testing.assert_close(terms.kl, expected.kl, atol=1e-5, rtol=1e-5)
    if needs.reference_logprobs:  # the policy really differs from the original model here
        assert not torch.allclose(expected.reference_nll_sum["forget"], expected.nll_sum["forget"].detach(), atol=1e-3)
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    assert terms.logged.keys() == expected.logged.keys()
    for key in expected.logged:
        assert terms.logged[key] == pytest.approx(expected.logged[key], abs=1e-5, rel=1e-5)
    if method == "rmu":
        assert expected.logged["rmu_retain_mse"] > 1e-8  # perturbed policy vs reference: the retain term is live
    assert got_grads.keys() == expected_grads.keys() and got_grads
    floor = 1e-3 * max(float(g.abs().max()) for g in expected_grads.values())
    for name, want in expected_grads.items():
        assert float((got_grads[name] - want).abs().max() / want.abs().max().clamp(min=floor)) < 1e-4, name
