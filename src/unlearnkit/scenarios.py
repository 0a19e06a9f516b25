"""The paper's three scenarios end to end, one command each: ``unlearnkit scenario NAME``.

A scenario is a chain of training stages (each a preset under configs/ run with ``unlearnkit.train``)
followed by one evaluation of the original model and every stage's output side by side, and a
report. The copyright scenario first plants memorized text (the builtin model has read no book):

    copyright      memorize (finetune on book passages) -> unlearn them -> evaluate original / memorized / unlearned
    hallucination  unlearn HaluEval's hallucinated answers -> evaluate original / unlearned
    harmful        unlearn harmful answers (the demo preset) -> evaluate original / unlearned
    harmful-pku    the same on PKU-SafeRLHF's unsafe responses (the paper's data)

Overrides apply to every stage (``max_steps=2``) or to one (``memorize.max_steps=2``,
``unlearn.lr=1e-5``). A finished stage whose resolved config is unchanged is reused (its model is
cached in the scenario folder), so re-running after a failed evaluation does not retrain;
``--fresh`` retrains everything. The evaluation uses the last stage's eval settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unlearnkit.config import RunConfig, load_config
from unlearnkit.errors import UserError


@dataclass(frozen=True)
class Stage:
    name: str  # label of its model in the results ("memorized", "unlearned")
    key: str  # override prefix ("memorize", "unlearn")
    preset: str  # file name under the presets folder


@dataclass(frozen=True)
class Scenario:
    summary: str
    stages: tuple[Stage, ...]


SCENARIOS: dict[str, Scenario] = {
    "copyright": Scenario("memorize book passages, then unlearn them (leak rate)",
                          (Stage("memorized", "memorize", "copyright_memorize.yaml"),
                           Stage("unlearned", "unlearn", "copyright_unlearn.yaml"))),
    "hallucination": Scenario("unlearn hallucinated answers (hallucination and right-answer rates)",
                              (Stage("unlearned", "unlearn", "hallucination.yaml"),)),
    "harmful": Scenario("unlearn harmful answers (harmful rates, utility on benign prompts)",
                        (Stage("unlearned", "unlearn", "demo.yaml"),)),
    "harmful-pku": Scenario("unlearn PKU-SafeRLHF unsafe responses (the paper's data; harmful rates, utility)",
                            (Stage("unlearned", "unlearn", "pku_harmful.yaml"),)),
}


def _split_overrides(overrides: list[str], stages: tuple[Stage, ...]) -> tuple[list[str], dict[str, list[str]]]:
    """Common overrides, and per-stage ones (``memorize.max_steps=2`` -> stage memorize, ``max_steps=2``)."""
    common, per_stage = [], {s.key: [] for s in stages}
    for text in overrides:
        prefix, dot, rest = text.partition(".")
        if dot and prefix in per_stage and "=" in rest and "=" not in prefix:
            per_stage[prefix].append(rest)
        else:
            common.append(text)
    return common, per_stage


def _stage_config(presets: Path, stage: Stage, root: Path, model: str | None, overrides: list[str]) -> RunConfig:
    path = presets / stage.preset
    if not path.is_file():
        raise UserError(f"scenario preset {path} not found; run from the repository root or pass --presets")
    # A later stage starts from the previous stage's model, whatever the overrides say.
    pinned = [*([f"model={model}"] if model else []), f"output_dir={root / stage.name}", "eval_before_after=false", "overwrite=true"]
    return load_config(path, [*overrides, *pinned])


def reusable(config: RunConfig, out: Path) -> bool:
    """A finished stage with the same resolved config (its model exists) need not be trained again."""
    saved, info = out / "config.yaml", out / "run_info.json"
    if not ((out / "model" / "config.json").is_file() and saved.is_file() and info.is_file()):
        return False
    from unlearnkit.train import RESUME_MAY_CHANGE

    before, now = yaml.safe_load(saved.read_text()), config.to_dict()
    defaults = RunConfig().to_dict()
    # Fields that do not change the trained weights are ignored (the output folder too: a scenario folder that
    # was moved or copied keeps its stages); a field the saved config predates counts as holding its default
    # (a newer unlearnkit adds fields without invalidating finished stages).
    return all(before.get(s, {}).get(k, defaults.get(s, {}).get(k)) == v
               for s, values in now.items() if s != "eval" for k, v in values.items()
               if k not in RESUME_MAY_CHANGE and k != "output_dir")


def run_scenario(name: str, output_dir: Path, overrides: list[str], *, presets: Path = Path("configs"), fresh: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Train every stage of scenario ``name`` into ``output_dir``/<stage>, evaluate all models, write the report."""
    from unlearnkit.evaluate.judges import load_judge
    from unlearnkit.evaluate.run import comparison_table, default_prompt_sets, eval_template, evaluate_models, resolve_device
    from unlearnkit.report import write_report
    from unlearnkit.train import train

    if name not in SCENARIOS:
        raise UserError(f"unknown scenario '{name}'; choose one of: {', '.join(SCENARIOS)}")
    scenario = SCENARIOS[name]
    common, per_stage = _split_overrides(overrides, scenario.stages)
    output_dir = Path(output_dir)
    # Resolve every stage's config before training anything: a bad key fails in a second, not after an hour.
    configs, model = [], None
    for stage in scenario.stages:
        quiet = [] if progress else ["progress=false"]
        config = _stage_config(presets, stage, output_dir, model, [*common, *per_stage[stage.key], *quiet])
        configs.append(config)
        model = str(output_dir / stage.name / "model")
    final = configs[-1]
    sets = default_prompt_sets(final)
    resolve_device(final.eval)
    judge = load_judge(final.eval.judge, final.eval.judge_threshold) if any(s.kind == "harmful" for s in sets) else None

    timings: dict[str, Any] = {}
    for stage, config in zip(scenario.stages, configs):
        out = output_dir / stage.name
        if not fresh and reusable(config, out):
            print(f"{name}: stage '{stage.name}' already trained with this config -> {out / 'model'} (reused)")
            timings[stage.name] = {"reused": True, **json.loads((out / "run_info.json").read_text())}
            continue
        started = time.perf_counter()
        result = train(config)
        timings[stage.name] = {"steps": result.steps, "stop_reason": result.stop_reason, "train_seconds": round(result.seconds, 1),
                               "wall_seconds": round(time.perf_counter() - started, 1)}
        print(f"{name}: stage '{stage.name}' trained {result.steps} steps in {result.seconds:.0f}s -> {out / 'model'}")

    models = [("original", configs[0].model)] + [(s.name, str(output_dir / s.name / "model")) for s in scenario.stages]
    started = time.perf_counter()
    meta = {"scenario": {"name": name, "summary": scenario.summary, "overrides": overrides, "stages": timings},
            "config": final.to_dict()}
    # A scenario that plants the behaviour first (copyright: memorize) also compares utility with that model: it
    # is the model the user had, and its answers already moved away from the original's.
    planted = scenario.stages[0].name if len(scenario.stages) > 1 else None
    results = evaluate_models(models, sets, final.eval, output_dir, template=eval_template(final), meta=meta,
                              progress=progress, seed=final.train.seed, judge=judge, also_similar_to=planted)
    results["meta"]["scenario"]["eval_seconds"] = round(time.perf_counter() - started, 1)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(comparison_table(results, SCENARIO_KEYS.get(name)))
    _, html = write_report(output_dir)
    print(f"results: {output_dir / 'results.json'}\nreport:  {html}")
    return results


SCENARIO_KEYS = {
    "copyright": ("leak_rate_extraction", "mean_bleu_extraction", "forget_nll_extraction", "extraction_strength_extraction",
                  "exact_memorization_extraction", "nm_rate_extraction", "on_topic_rate_benign",
                  "similarity_to_original_benign", "similarity_to_memorized_benign", "nm_rate_benign", "refusal_rate_overrefusal"),
    "hallucination": ("hallucination_rate_hallucination", "right_answer_rate_hallucination", "on_topic_rate_benign",
                      "similarity_to_original_benign", "nm_rate_benign", "refusal_rate_overrefusal"),
    "harmful-pku": ("harmful_rate_forget", "harmful_rate_heldout", "on_topic_rate_benign", "similarity_to_original_benign",
                    "nm_rate_benign", "refusal_rate_overrefusal"),
    "harmful": ("harmful_rate_forget", "harmful_rate_heldout", "on_topic_rate_benign", "similarity_to_original_benign",
                "nm_rate_benign", "refusal_rate_overrefusal"),
}
