"""The field's methods (grad_diff, npo, simnpo, idk_nll, idk_dpo, dpo, rmu): how they combine terms (hand
values), what they declare they need, config validation, their step groups, the direction one step moves a
tiny random model, and two steps end to end through `unlearnkit run`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from unlearnkit.cli import main
from unlearnkit.config import MethodConfig, load_config
from unlearnkit.data import QAExample, StepBatcher, pad_id_of, sample_refusals, tokenize_qa
from unlearnkit.errors import UserError
from unlearnkit.losses import answer_logprob, answer_nll, rmu_direction
from unlearnkit.methods import METHODS, REFUSALS, Needs, StepTerms, resolve_needs
from unlearnkit.modeling import Reference, add_lora, decoder_layers, load_model, train_only_mlp_out
from unlearnkit.train import compute_terms, hidden_layer_of, prepare_data

FIELD_METHODS = ("grad_diff", "npo", "simnpo", "idk_nll", "idk_dpo", "dpo", "rmu")
PAPER_METHODS = ("ga", "ga_mismatch", "ga_kl", "ga_mismatch_kl", "templated", "finetune")


@pytest.fixture
def preference_files(tmp_path) -> tuple[Path, Path]:
    """Forget rows with a preferred ``safer`` answer, and normal rows."""
    forget = tmp_path / "forget.jsonl"
    normal = tmp_path / "normal.jsonl"
    forget.write_text("".join(json.dumps({"question": f"How do I pick lock {i}?", "answer": f"Insert a tension wrench and rake pin {i}.",
                                          "safer": "I can't help with that."}) + "\n" for i in range(6)))
    normal.write_text("".join(json.dumps({"question": f"What is the capital of country {i}?", "answer": f"The capital is city {i}."}) + "\n"
                              for i in range(8)))
    return forget, normal


def make_config(model_dir: Path, files, out: Path, method: str, *overrides: str):
    forget, normal = files
    extra = {"dpo": ["forget_preferred_column=safer"], "rmu": ["rmu_layer=1"]}.get(method, [])
    return load_config(None, [f"model={model_dir}", f"forget={forget}", f"normal={normal}", f"output_dir={out}",
                              "progress=false", "max_steps=2", "batch_size=2", f"method={method}", *extra, *overrides])


# ------------------------------------------------------------------------------------------ combine: hand values
def terms(logp: dict[str, list[float]] | None = None, reference_logp: dict[str, list[float]] | None = None,
          mean_nll: dict[str, list[float]] | None = None) -> StepTerms:
    """forget NLL [1, 3]; normal (retain) NLL [2, 4]; kl 0.25; per-group summed log-probs / mean NLLs as given."""
    t = StepTerms(forget_nll=torch.tensor([1.0, 3.0], requires_grad=True), kl=torch.tensor(0.25))
    for group, values in {"normal": [2.0, 4.0], **(mean_nll or {})}.items():
        t.nll_sum[group], t.tokens[group] = torch.tensor(values), torch.ones(len(values))
    for group, values in (logp or {}).items():
        t.nll_sum[group], t.tokens[group] = -torch.tensor(values), torch.full((len(values),), 2.0)
    for group, values in (reference_logp or {}).items():
        t.reference_nll_sum[group] = -torch.tensor(values)
    return t


@pytest.mark.parametrize("regularizer, expected", [("auto", -2.0 + 0.5 * 3), ("retain_nll", -2.0 + 0.5 * 3), ("kl", -2.0 + 4 * 0.25),
                                                   ("none", -2.0)])
def test_grad_diff_is_ga_plus_the_chosen_regularizer(regularizer, expected) -> None:
    config = MethodConfig(name="grad_diff", regularizer=regularizer, w_retain=0.5, w_normal=4.0)
    assert METHODS["grad_diff"].combine(terms(), config).item() == pytest.approx(expected)


def test_npo_simnpo_combine_hand_values() -> None:
    # npo, beta 0.5, log ratios [0, -2] -> 2 (ln 2 + ln(1 + e^-1)); + w_retain * mean retain NLL (1 * 3).
    t = terms(logp={"forget": [-2.0, -4.0]}, reference_logp={"forget": [-2.0, -2.0]})
    npo = 2 * (math.log(2) + math.log1p(math.exp(-1)))
    assert METHODS["npo"].combine(t, MethodConfig(name="npo", npo_beta=0.5)).item() == pytest.approx(npo + 3.0, abs=1e-6)
    assert t.logged["npo_loss"] == pytest.approx(npo, abs=1e-6)
    assert METHODS["npo"].combine(t, MethodConfig(name="npo", npo_beta=0.5, regularizer="none")).item() == pytest.approx(npo, abs=1e-6)
    # simnpo, beta 2, gamma 0, mean NLL [1, 3]: -(mean(log s(2), log s(6))); no reference needed.
    simnpo = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-6))) / 2
    config = MethodConfig(name="simnpo", simnpo_beta=2.0, simnpo_gamma=0.0, regularizer="none")
    assert METHODS["simnpo"].combine(terms(), config).item() == pytest.approx(simnpo, abs=1e-6)


def test_idk_and_dpo_combine_hand_values() -> None:
    t = terms(mean_nll={"preferred": [0.5, 1.5]})
    assert METHODS["idk_nll"].combine(t, MethodConfig(name="idk_nll", w_retain=2.0)).item() == pytest.approx(1.0 + 2.0 * 3.0)
    t = terms(logp={"preferred": [-1.0, -1.0], "forget": [-3.0, -3.0]}, reference_logp={"preferred": [-2.0, -2.0], "forget": [-2.0, -2.0]})
    dpo = math.log1p(math.exp(-1.0))  # beta 0.5 * margin 2
    assert METHODS["idk_dpo"].combine(t, MethodConfig(name="idk_dpo", dpo_beta=0.5)).item() == pytest.approx(dpo + 3.0, abs=1e-6)
    assert METHODS["dpo"].combine(t, MethodConfig(name="dpo", dpo_beta=0.5)).item() == pytest.approx(dpo, abs=1e-6)  # default: none


def test_rmu_combine_hand_value() -> None:
    u = rmu_direction(2, seed=0)
    forget = (3 * u).view(1, 1, 2) + torch.tensor([1.0, -1.0])  # distance (1, -1) from c*u with c = 3 -> MSE 1
    t = StepTerms(forget_nll=torch.zeros(1), hidden={"forget": forget, "normal": torch.tensor([[[1.0, 1.0]]])},
                  hidden_mask={"forget": torch.tensor([[True]]), "normal": torch.tensor([[True]])},
                  reference_hidden={"normal": torch.tensor([[[1.0, 3.0]]])})
    loss = METHODS["rmu"].combine(t, MethodConfig(name="rmu", rmu_coeff=3.0, rmu_alpha=10.0, rmu_seed=0))
    assert loss.item() == pytest.approx(1.0 + 10.0 * 2.0, abs=1e-5)
    assert t.logged == pytest.approx({"rmu_forget_mse": 1.0, "rmu_retain_mse": 2.0}, abs=1e-5)


def test_a_missing_term_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="nll_sum\\['forget'\\]|reference_nll_sum"):
        METHODS["npo"].combine(terms(), MethodConfig(name="npo"))


# ------------------------------------------------------------------------------------------ needs and config
def test_needs_follow_the_method_and_its_regularizer() -> None:
    npo = resolve_needs(METHODS["npo"], MethodConfig(name="npo"))
    assert npo == Needs(reference_logprobs=True, retain_nll=True) and npo.normal and npo.reference
    assert (npo.nll_groups, npo.reference_nll_groups, npo.kl_group) == (("forget", "normal"), ("forget",), None)
    assert resolve_needs(METHODS["npo"], MethodConfig(name="npo", regularizer="kl")) == Needs(reference_logprobs=True, kl=True)
    simnpo = resolve_needs(METHODS["simnpo"], MethodConfig(name="simnpo", regularizer="none"))
    assert simnpo == Needs() and not simnpo.normal and not simnpo.reference  # no reference model at all
    assert resolve_needs(METHODS["idk_nll"], MethodConfig(name="idk_nll")).preferred == "refusal"
    dpo = resolve_needs(METHODS["dpo"], MethodConfig(name="dpo"))
    assert dpo == Needs(preferred="column", reference_logprobs=True)
    assert (dpo.nll_groups, dpo.reference_nll_groups) == (("forget", "preferred"), ("forget", "preferred"))
    rmu = resolve_needs(METHODS["rmu"], MethodConfig(name="rmu"))
    assert rmu.hidden_states and rmu.normal and rmu.reference and not rmu.retain_nll and rmu.hidden_groups == ("forget", "normal")
    for name in PAPER_METHODS:  # unchanged by the new field
        assert resolve_needs(METHODS[name], MethodConfig(name=name, regularizer="kl")) == METHODS[name].needs


def test_field_methods_are_registered_with_papers_and_defaults() -> None:
    assert set(FIELD_METHODS) <= set(METHODS)
    for name in FIELD_METHODS:
        assert METHODS[name].paper and METHODS[name].summary and METHODS[name].combine.__doc__
    c = MethodConfig()
    assert (c.npo_beta, c.simnpo_beta, c.simnpo_gamma, c.dpo_beta) == (0.1, 2.5, 0.0, 0.1)
    assert (c.rmu_layer, c.rmu_coeff, c.rmu_alpha, c.rmu_params, c.regularizer, c.w_retain) == (7, 6.5, 1200.0, "mlp_out", "auto", 1.0)


@pytest.mark.parametrize("overrides, message", [
    (["method=ga", "regularizer=kl"], "method ga takes regularizer only auto"),
    (["method=rmu", "regularizer=retain_nll"], "method rmu takes regularizer only auto"),
    (["method=dpo"], "forget_preferred_column"),
    (["method=npo", "npo_beta=0"], "npo_beta"),
    (["method=simnpo", "simnpo_gamma=-1"], "simnpo_gamma"),
    (["method=rmu", "rmu_layer=-1"], "rmu_layer"),
    (["method=rmu", "rmu_params=some"], "rmu_params"),
    (["regularizer=l2"], "regularizer"),
])
def test_bad_method_settings_fail_at_load(overrides, message) -> None:
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)


# ------------------------------------------------------------------------------------------ step groups
def test_refusal_draws_are_deterministic_and_varied(chatml_tokenizer) -> None:
    draws = [sample_refusals(4, len(REFUSALS), seed=3, step=s).tolist() for s in range(6)]
    assert draws == [sample_refusals(4, len(REFUSALS), seed=3, step=s).tolist() for s in range(6)]
    assert len({i for row in draws for i in row}) > 4
    assert draws != [sample_refusals(4, len(REFUSALS), seed=4, step=s).tolist() for s in range(6)]
    assert len(set(REFUSALS)) == len(REFUSALS) >= 10


def test_preferred_group_pairs_each_forget_prompt_with_its_answer(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    forget = [QAExample(f"How do I pick lock {i}?", f"pins {i}", preferred=f"no {i}") for i in range(3)]
    refusals = [tok(" Nope.", add_special_tokens=False)["input_ids"], tok(" Ask someone else.", add_special_tokens=False)["input_ids"]]
    options = dict(batch_size=2, num_mismatch=1, max_length=64, pad_id=pad_id_of(tok), seed=1, mismatch_source=None, use_normal=False)
    for source in ("refusal", "column"):
        batcher = StepBatcher(tokenize_qa(tok, forget, "paper"), [], preferred_source=source, refusal_ids=refusals, **options)
        step = batcher(2)
        assert list(step.slices) == ["forget", "preferred"]
        batch = step.batch
        for f_row, p_row in zip(range(2), range(2, 4)):
            f_labels, p_labels = batch["labels"][f_row], batch["labels"][p_row]
            prompt_len = int((f_labels[: int(batch["attention_mask"][f_row].sum())] == -100).sum())
            assert torch.equal(batch["input_ids"][f_row, :prompt_len], batch["input_ids"][p_row, :prompt_len])  # same prompt
            assert bool((p_labels[:prompt_len] == -100).all())
            answer = tok.decode(batch["input_ids"][p_row][p_labels != -100]).replace(tok.eos_token, "").strip()
            question = tok.decode(batch["input_ids"][f_row, :prompt_len])
            if source == "column":
                assert answer == "no " + question.split("lock ")[1][0]
            else:
                assert answer in ("Nope.", "Ask someone else.")


# ------------------------------------------------------------------------------------------ one step on a tiny model
def one_step(model_dir: Path, files, tmp_path: Path, method: str, *overrides: str, lr: float = 1e-2):
    """(terms before, terms after) of one SGD step on step 0's batch."""
    torch.manual_seed(0)
    config = make_config(model_dir, files, tmp_path / "out", method, *overrides)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    meth = METHODS[method]
    needs = resolve_needs(meth, config.method)
    batch = prepare_data(config, tokenizer, meth)(0)
    policy = load_model(config.model)
    reference = Reference(policy, lora=False) if needs.reference else None
    if method == "rmu":
        train_only_mlp_out(policy, [0, 1])
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=lr)
    layer = hidden_layer_of(config.method, needs)
    before = compute_terms(policy, reference, batch, needs.step_needs, hidden_layer=layer)
    loss = meth.combine(before, config.method)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = compute_terms(policy, reference, batch, needs.step_needs, hidden_layer=layer)
        meth.combine(after, config.method)
    return before, after


@pytest.mark.parametrize("method", ["grad_diff", "npo", "simnpo", "idk_dpo", "dpo"])
def test_one_step_raises_the_forget_nll(method, tiny_model_dir, preference_files, tmp_path) -> None:
    # No regularizer: the forget term alone must push the forget answers' NLL up. SimNPO with its default beta 2.5 is
    # saturated on a random model (mean NLL ~6 counts as forgotten already: weight sigmoid(-15)), so a small beta here.
    extra = ["simnpo_beta=0.1"] if method == "simnpo" else []
    before, after = one_step(tiny_model_dir, preference_files, tmp_path, method, "regularizer=none", *extra, lr=0.5)
    assert after.forget_nll.mean() > before.forget_nll.mean() + 1e-4


def test_one_idk_step_lowers_the_refusal_nll(tiny_model_dir, preference_files, tmp_path) -> None:
    before, after = one_step(tiny_model_dir, preference_files, tmp_path, "idk_nll", "regularizer=none", lr=0.5)
    assert after.mean_nll("preferred").mean() < before.mean_nll("preferred").mean() - 1e-4


def test_dpo_steps_widen_the_preference_margin(tiny_model_dir, preference_files, tmp_path) -> None:
    before, after = one_step(tiny_model_dir, preference_files, tmp_path, "idk_dpo", "regularizer=none", lr=0.5)
    margin = lambda t: (t.logprob("preferred") - t.reference_logprob("preferred") - t.logprob("forget")  # noqa: E731
                        + t.reference_logprob("forget")).mean().detach()
    assert abs(float(margin(before))) < 1e-5 and float(margin(after)) > 1e-4  # policy == reference before the step


def test_rmu_moves_the_layer_activations_toward_the_target(tiny_model_dir, preference_files, tmp_path) -> None:
    before, after = one_step(tiny_model_dir, preference_files, tmp_path, "rmu", "rmu_coeff=2", "rmu_alpha=1", lr=0.1)
    assert after.logged["rmu_forget_mse"] < before.logged["rmu_forget_mse"] - 1e-4
    assert before.logged["rmu_retain_mse"] == pytest.approx(0.0, abs=1e-10)  # policy == reference before the step
    # The steered hidden states come from the chosen layer's output (hidden_states[layer + 1]).
    assert before.hidden["forget"].shape[-1] == 32


def test_npo_gradient_tends_to_gradient_ascent_as_beta_goes_to_zero(tiny_model_dir, preference_files, tmp_path) -> None:
    """grad L_NPO = mean_i W_i grad log pi(y_i|x_i) with W_i -> 1: the gradient of mean_i log pi (GA on summed log-probs)."""
    config = make_config(tiny_model_dir, preference_files, tmp_path / "out", "npo", "batch_size=3")
    batch = prepare_data(config, AutoTokenizer.from_pretrained(tiny_model_dir), METHODS["npo"])(0)
    policy = load_model(config.model)
    reference = Reference(policy, lora=False)
    with torch.no_grad():  # move the policy away from the reference so the log ratios are not 0
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    needs = Needs(reference_logprobs=True).step_needs

    def gradient(loss_of) -> torch.Tensor:
        policy.zero_grad()
        loss_of(compute_terms(policy, reference, batch, needs)).backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters()])

    ga = gradient(lambda t: t.logprob("forget").mean())
    cosines = []
    for beta in (5.0, 0.5, 1e-3):
        npo = gradient(lambda t: METHODS["npo"].combine(t, MethodConfig(name="npo", npo_beta=beta, regularizer="none")))
        cosines.append(float(torch.nn.functional.cosine_similarity(npo, ga, dim=0)))
        if beta == 1e-3:
            assert float((npo - ga).norm() / ga.norm()) < 1e-2
    assert cosines[-1] > 0.9999 and cosines[0] < cosines[-1]


def test_reference_logprobs_with_lora_are_the_adapter_free_model(tiny_model_dir, preference_files, tmp_path) -> None:
    config = make_config(tiny_model_dir, preference_files, tmp_path / "out", "idk_dpo", "lora=true", "lora_r=2")
    batch = prepare_data(config, AutoTokenizer.from_pretrained(tiny_model_dir), METHODS["idk_dpo"])(0)
    base = load_model(config.model)
    with torch.no_grad():
        expected = answer_logprob(base(input_ids=batch.batch["input_ids"], attention_mask=batch.batch["attention_mask"]).logits,
                                  batch.batch["labels"])
    policy = add_lora(load_model(config.model), config.model)
    with torch.no_grad():  # a non-zero adapter, so policy and reference differ
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    terms = compute_terms(policy, Reference(policy, lora=True), batch, resolve_needs(METHODS["idk_dpo"], config.method).step_needs)
    fs, ps = batch.slices["forget"], batch.slices["preferred"]
    assert torch.allclose(terms.reference_logprob("forget"), expected[fs], atol=1e-4)
    assert torch.allclose(terms.reference_logprob("preferred"), expected[ps], atol=1e-4)
    assert not torch.allclose(terms.logprob("forget"), expected[fs], atol=1e-3)
    assert torch.allclose(terms.forget_nll, answer_nll(policy(**{k: batch.batch[k] for k in ("input_ids", "attention_mask")}).logits[fs],
                                                       batch.batch["labels"][fs]), atol=1e-5)


def test_rmu_trains_only_the_mlp_output_projections(tiny_model_dir) -> None:
    from unlearnkit.config import ModelConfig

    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    prefix, layers = decoder_layers(model)
    assert prefix == "model.layers" and len(layers) == 2
    kept = train_only_mlp_out(model, [1])
    assert kept == ["model.layers.1.mlp.down_proj.weight"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == kept
    with pytest.raises(UserError, match="rmu_params=all"):
        train_only_mlp_out(model, [0])  # nothing trainable left there


# ------------------------------------------------------------------------------------------ end to end
def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("method, extra", [
    ("grad_diff", []), ("npo", []), ("simnpo", []), ("idk_nll", []), ("idk_dpo", []), ("dpo", []), ("rmu", []),
    ("npo", ["lora=true", "regularizer=kl"]), ("rmu", ["lora=true", "lora_target_modules=down_proj"]), ("rmu", ["rmu_params=all"]),
])
def test_every_method_runs_two_steps_end_to_end(method, extra, tiny_model_dir, preference_files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    forget, normal = preference_files
    more = {"dpo": ["forget_preferred_column=safer"], "rmu": ["rmu_layer=1", "rmu_coeff=2", "rmu_alpha=10"]}.get(method, [])
    code, stdout, err = run_cli(capsys, "run", f"model={tiny_model_dir}", f"forget={forget}", f"normal={normal}", f"output_dir={out}",
                                "max_steps=2", "lr=1e-3", "progress=false", f"method={method}", *more, *extra)
    assert code == 0, err
    assert "unlearned for 2 steps" in stdout
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    first = rows[0]
    if method == "npo":  # policy == reference at step 1: log ratio 0 -> L_NPO = 2 ln 2 / beta exactly
        assert first["npo_loss"] == pytest.approx(2 * math.log(2) / 0.1, rel=1e-5)
    if method in ("idk_dpo", "dpo"):  # margin 0 at step 1 -> L_DPO = ln 2
        assert first["dpo_loss"] == pytest.approx(math.log(2), rel=1e-5)
    if method == "rmu":
        assert first["rmu_retain_mse"] == pytest.approx(0.0, abs=1e-8) and rows[1]["rmu_retain_mse"] > 0
    if "regularizer=kl" in extra:
        assert first["kl"] == pytest.approx(0.0, abs=1e-6) and "retain_nll" not in first
    elif method not in ("rmu", "dpo"):
        assert first["retain_nll"] > 0 and first["kl"] is None
    assert (out / "model" / "config.json").is_file()
    card = (out / "model" / "README.md").read_text()
    assert METHODS[method].paper in card


def test_methods_subcommand_lists_every_method(capsys) -> None:
    code, stdout, _ = run_cli(capsys, "methods")
    assert code == 0
    lines = stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(METHODS)
