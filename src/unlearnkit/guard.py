"""The utility guard: stop a run before it breaks the model, and export the step that forgot most while it held.

With ``guard_every=N`` the training loop checks the model every N steps (and at its last step):
- greedy answers (``guard_max_new_tokens`` new tokens, one batch) to ``guard_prompts`` prompts of a small
  benign validation set (``guard_set``; builtin ``guard_benign``), scored against the ORIGINAL model's
  answers to the same prompts (generated once before the first update and kept in the checkpoint):
  mean MiniLM cosine similarity (``guard_similarity``, as ``similarity_to_original`` in evaluation) and the
  share of not-meaningful answers (``guard_nm``, evaluate.metrics.is_not_meaningful);
- the forgetting so far: the mean answer NLL of a fixed forget probe (the first ``guard_prompts`` forget
  examples, tokenized and truncated as trained) (``guard_forget_nll``).
Utility holds at a check when similarity >= ``guard_min_similarity`` and (if set) NM <= ``guard_max_nm``.
The values go into train_log.jsonl beside the step's losses.

What is exported (``select_step``, a pure function):
- ``guard_action=keep_best``: training runs to its end; the model written is the checked step with the
  HIGHEST probe forget NLL among the steps whose utility held;
- ``guard_action=stop``: training stops at the first check whose utility broke; the model written is the
  last checked step that held.
A step whose utility broke is never chosen while any step held. The original model (step 0) is never
chosen: exporting it would silently undo the run. If no check held, the run says so loudly (run_info.json
``guard.status`` = ``none_held``, a WARNING line) and exports the least-broken check (smallest shortfall
below the thresholds), so the user gets the closest thing to a usable model and the evidence, not a copy
of the input.

Why a fixed probe and not the logged training forget NLL: each step's logged value is the NLL of that
step's own batch (2 examples at the presets' batch size), so two steps' values differ by which examples
were drawn as much as by forgetting; the probe scores the same examples at every check (one batched
forward, no generation), so the comparison between checks is like for like.

Resume: the guard's state (original answers, every check, whether it stopped) is part of the loop state
in each checkpoint; the kept weights of the chosen step live in ``output_dir/guard/step-N.safetensors``
and a file is deleted only when neither the current state nor any checkpoint still refers to it.
One process only: a multi-process launch with the guard on is refused before anything loads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from unlearnkit.data import QAExample
from unlearnkit.errors import UserError

GUARD_DIR = "guard"
KEEP_BEST, STOP = "keep_best", "stop"


# ------------------------------------------------------------------------------------------- the rule (pure)
@dataclass(frozen=True)
class GuardPoint:
    """One guard check: the step it ran after, its utility scores and the probe's forget NLL."""

    step: int
    similarity: float
    nm: float
    forget_nll: float
    held: bool


@dataclass(frozen=True)
class Selection:
    step: int
    held: bool  # False: no check held; ``step`` is the least-broken one
    reason: str


def utility_holds(similarity: float, nm: float, min_similarity: float, max_nm: float | None) -> bool:
    """Whether utility held at a check: similarity at or above the floor, NM at or below the ceiling (if any).
    A NaN score never holds."""
    if not (math.isfinite(similarity) and similarity >= min_similarity):
        return False
    return max_nm is None or (math.isfinite(nm) and nm <= max_nm)


def shortfall(point: GuardPoint, min_similarity: float, max_nm: float | None) -> float:
    """How far a check is below its thresholds (0 when it held): the similarity missing to the floor plus
    the NM share above the ceiling (both are fractions of 1, so they add on one scale)."""
    missing = max(0.0, min_similarity - point.similarity) if math.isfinite(point.similarity) else math.inf
    excess = 0.0 if max_nm is None else (max(0.0, point.nm - max_nm) if math.isfinite(point.nm) else math.inf)
    return missing + excess


def select_step(points: Sequence[GuardPoint], action: str, min_similarity: float, max_nm: float | None) -> Selection | None:
    """The checked step to export (see the module docstring); None when no step after 0 was checked.

    keep_best: the held step with the highest forget NLL (ties: the earlier step, the smaller change);
    stop: the last held step. No held step: the least-broken step (smallest shortfall; ties: the earlier).
    """
    if action not in (KEEP_BEST, STOP):
        raise ValueError(f"unknown guard action {action!r}")
    trained = [p for p in points if p.step > 0]
    if not trained:
        return None
    held = [p for p in trained if utility_holds(p.similarity, p.nm, min_similarity, max_nm)]
    if held:
        if action == STOP:
            best = max(held, key=lambda p: p.step)
            return Selection(best.step, True, f"the last checked step whose utility held ({len(held)} of {len(trained)} held)")
        best = min(held, key=lambda p: (-_finite(p.forget_nll), p.step))
        return Selection(best.step, True, f"the most forgetting (forget NLL {best.forget_nll:.3f}) among the {len(held)} of "
                                          f"{len(trained)} checked steps whose utility held")
    least = min(trained, key=lambda p: (shortfall(p, min_similarity, max_nm), p.step))
    return Selection(least.step, False, f"utility broke at all {len(trained)} checks; step {least.step} is the least broken "
                                        f"(similarity {least.similarity:.3f}, NM {least.nm:.1%})")


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


# ------------------------------------------------------------------------------------------- set-up checks
@dataclass
class GuardData:
    """What the guard reads: its validation prompts and the fixed forget probe."""

    prompts: list[str]
    probe: list[QAExample]
    note: str = ""


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def prepare_guard(config: Any, data: Sequence[list[QAExample]], processes: int) -> GuardData | None:
    """Load and check the guard's prompts before training (None when the guard is off).

    UserError when the launch has several processes, the method learns instead of forgetting, or the guard
    set shares a prompt with any evaluation set of the run (eval_forget/heldout/benign/overrefusal/normal/
    extraction/hallucination, read whole) or with the training forget or normal data."""
    t = config.train
    if not t.guard_every:
        return None
    if processes > 1:
        raise UserError(f"guard_every needs a one-process run (this launch has {processes} processes); "
                        "set guard_every=0 or run without accelerate launch")
    if config.method.name == "finetune":
        raise UserError("guard_every keeps the step with the most forgetting; method finetune learns its data instead: set guard_every=0 "
                        "(in a scenario, give it to the unlearning stage only: unlearn.guard_every=N)")
    from unlearnkit.evaluate.run import dataset_family, default_prompt_sets, prompt_only_set

    guard = prompt_only_set("guard", "benign", t.guard_set, 0)
    prompts = guard.questions[: t.guard_prompts]
    keys = {_normalized(q) for q in prompts}
    # Every prompt of every evaluation set (not only the first eval_max_prompts): a later eval may read them all.
    for prompt_set in default_prompt_sets(replace(config, eval=replace(config.eval, eval_max_prompts=0))):
        shared = sum(_normalized(q) in keys for q in prompt_set.questions)
        if shared:
            raise UserError(f"guard_set {t.guard_set} shares {shared} prompts with the evaluation set '{prompt_set.name}' "
                            f"({prompt_set.source}); the guard must validate on prompts no evaluation reads: choose another "
                            "guard_set (builtin: guard_benign)")
    forget, normal = data[0], data[1]  # train.RunData
    for what, examples in (("forget", forget), ("normal", normal)):
        shared = sum(_normalized(e.question) in keys for e in examples)
        if shared:
            raise UserError(f"guard_set {t.guard_set} shares {shared} prompts with the training {what} data ({getattr(config.data, what)}); "
                            "the guard must validate on prompts the run never trains on: choose another guard_set")
    note = ""
    if dataset_family(t.guard_set) == dataset_family(config.data.normal):
        note = f"in-distribution: guard_set has the same source as the training normal data ({config.data.normal})"
    return GuardData(prompts, forget[: t.guard_prompts], note)


# ------------------------------------------------------------------------------------------- the guard in a run
class UtilityGuard:
    """The guard of one run: checks, keeps the chosen step's weights, says what to export.

    Its state lives in ``run.state.guard`` (a JSON-able dict written with every checkpoint)."""

    def __init__(self, run: Any, data: GuardData) -> None:
        from unlearnkit.evaluate.run import eval_template

        self.run, self.data, self.t = run, data, run.config.train
        template = eval_template(run.config)  # the evaluation's format: copyright's raw-text runs answer in chat format
        if template == "auto":
            template = "chat" if getattr(run.tokenizer, "chat_template", None) else "paper"
        self.template = template
        self.folder = run.out / GUARD_DIR
        device = str(run.accelerator.device)
        self.embed_device = device if device.startswith("cuda") else "cpu"
        self._original_embeddings: Any = None
        digest = hashlib.sha256(json.dumps([data.prompts, template, self.t.guard_max_new_tokens]).encode()).hexdigest()[:16]
        state = run.state.guard
        if state is None or state.get("digest") != digest:
            # Before the first update: the original model's answers and scores are the reference (step 0).
            started = time.perf_counter()
            self.state = run.state.guard = {"digest": digest, "original_answers": self._generate(), "points": [], "stopped": False}
            scores = self._score(self.state["original_answers"])
            self.state["points"].append(asdict(GuardPoint(0, 1.0, scores["nm"], scores["forget_nll"], True)))
            self.state["original_seconds"] = round(time.perf_counter() - started, 2)
        else:
            self.state = state  # resumed: the original's answers and the checks so far come from the checkpoint
        self._prune()  # files left by a killed run past its last checkpoint

    # ----------------------------------------------------------------------------- scoring
    def _generate(self) -> list[str]:
        from unlearnkit.evaluate.generate import GenerationSettings, generate

        settings = GenerationSettings(template=self.template, max_new_tokens=self.t.guard_max_new_tokens,
                                      batch_size=len(self.data.prompts))
        return generate(self.run.model, self.run.tokenizer, self.data.prompts, settings, progress=False).responses

    def _score(self, answers: list[str]) -> dict[str, float]:
        import numpy as np

        from unlearnkit.evaluate import metrics
        from unlearnkit.evaluate.generate import score_answers
        from unlearnkit.evaluate.judges import minilm_embed

        if self._original_embeddings is None:
            self._original_embeddings = minilm_embed(self.state["original_answers"], device=self.embed_device)
        similarity = float(np.mean(metrics.cosine_similarity_rows(self._original_embeddings, minilm_embed(answers, device=self.embed_device))))
        nm = float(np.mean([metrics.is_not_meaningful(a) for a in answers]))
        d = self.run.config.data
        probe = self.data.probe
        scored = score_answers(self.run.model, self.run.tokenizer, [e.question for e in probe], [e.answer for e in probe],
                               d.template, max_length=d.max_length)
        return {"similarity": similarity, "nm": nm, "forget_nll": float(np.mean(scored.mean_nll()))}

    # ----------------------------------------------------------------------------- the loop's calls
    def due(self, step: int, ending: bool) -> bool:
        """A check runs every guard_every steps and at the run's last step."""
        return step % self.t.guard_every == 0 or ending

    def points(self) -> list[GuardPoint]:
        return [GuardPoint(**p) for p in self.state["points"]]

    def selection(self) -> Selection | None:
        return select_step(self.points(), self.t.guard_action, self.t.guard_min_similarity, self.t.guard_max_nm)

    def check(self) -> dict[str, Any]:
        """Score the model now (after step ``run.state.step``); keep its weights if it is the new choice.
        Returns the log fields."""
        run, t = self.run, self.t
        started = time.perf_counter()
        scores = self._score(self._generate())
        held = utility_holds(scores["similarity"], scores["nm"], t.guard_min_similarity, t.guard_max_nm)
        step = run.state.step
        self.state["points"] = [p for p in self.state["points"] if p["step"] != step]
        self.state["points"].append(asdict(GuardPoint(step, scores["similarity"], scores["nm"], scores["forget_nll"], held)))
        if t.guard_action == STOP and not held:
            self.state["stopped"] = True
        chosen = self.selection()
        if chosen is not None and chosen.step == step:
            self._keep(step)
        self._prune()
        return {"guard_similarity": scores["similarity"], "guard_nm": scores["nm"], "guard_forget_nll": scores["forget_nll"],
                "guard_held": held, "guard_seconds": round(time.perf_counter() - started, 3)}

    def stop_reason(self) -> str:
        if not self.state.get("stopped"):
            return ""
        last = self.points()[-1]
        return (f"guard: utility broke at step {last.step} (similarity {last.similarity:.3f}, min {self.t.guard_min_similarity}; "
                f"NM {last.nm:.1%}" + (f", max {self.t.guard_max_nm:.1%}" if self.t.guard_max_nm is not None else "") + ")")

    # ----------------------------------------------------------------------------- kept weights
    def _path(self, step: int) -> Path:
        return self.folder / f"step-{step}.safetensors"

    def _keep(self, step: int) -> None:
        from safetensors.torch import save_file

        from unlearnkit.modeling import trainable_state

        if not self.run.is_main:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=self.folder)
        os.close(handle)
        try:
            save_file({n: w.cpu() for n, w in trainable_state(self.run.model).items()}, staging)
            os.replace(staging, self._path(step))
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise

    def _referenced(self) -> set[int]:
        """Steps whose kept weights someone may still need: the current choice and each checkpoint's choice."""
        from unlearnkit.checkpoint import checkpoints

        steps = set()
        chosen = self.selection()
        if chosen is not None:
            steps.add(chosen.step)
        for folder in checkpoints(self.run.out):
            saved = json.loads((folder / "state.json").read_text()).get("guard")
            if saved:
                points = [GuardPoint(**p) for p in saved["points"]]
                picked = select_step(points, self.t.guard_action, self.t.guard_min_similarity, self.t.guard_max_nm)
                if picked is not None:
                    steps.add(picked.step)
        return steps

    def _prune(self) -> None:
        if not self.run.is_main or not self.folder.is_dir():
            return
        keep = self._referenced()
        for path in self.folder.iterdir():
            name = path.name
            if name.startswith(".tmp-") or (name.startswith("step-") and int(name[5:].split(".")[0]) not in keep):
                path.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------- export
    def export(self, final_weights: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The weights to write as the model and the run_info.json ``guard`` block (also printed)."""
        from safetensors.torch import load_file

        t, step = self.t, self.run.state.step
        chosen = self.selection()
        points = self.points()
        weights = final_weights
        if chosen is not None and chosen.step != step:
            path = self._path(chosen.step)
            if not path.is_file():
                raise UserError(f"the guard's kept weights {path} are missing; rerun with overwrite=true")
            weights = load_file(str(path))
        status = "held" if chosen is None or chosen.held else "none_held"
        info = {
            "status": status, "exported_step": chosen.step if chosen else step, "trained_steps": step,
            "rule": f"guard_action={t.guard_action}: " + (chosen.reason if chosen else "no check after step 0"),
            "action": t.guard_action, "min_similarity": t.guard_min_similarity, "max_nm": t.guard_max_nm,
            "guard_set": t.guard_set, "prompts": len(self.data.prompts), "probe_examples": len(self.data.probe),
            "stopped": bool(self.state.get("stopped")), "original_seconds": self.state.get("original_seconds"),
            "checks": [asdict(p) for p in points],
            **({"note": self.data.note} if self.data.note else {}),
        }
        return weights, info

    @staticmethod
    def summary(info: dict[str, Any]) -> str:
        """One line for the console; a loud WARNING when no check held."""
        exported = next((p for p in info["checks"] if p["step"] == info["exported_step"]), None)
        scores = (f"similarity {exported['similarity']:.3f}, NM {exported['nm']:.1%}, forget NLL {exported['forget_nll']:.3f}"
                  if exported else "")
        if info["status"] == "none_held":
            return (f"WARNING guard: utility broke at every check (similarity < {info['min_similarity']}"
                    + (f" or NM > {info['max_nm']:.1%}" if info["max_nm"] is not None else "")
                    + f"); exported the least-broken step {info['exported_step']} of {info['trained_steps']} ({scores}): "
                    "lower lr or steps, raise the regularizer, or loosen guard_min_similarity")
        return f"guard: exported step {info['exported_step']} of {info['trained_steps']} ({scores}): {info['rule']}"


def announce(info: dict[str, Any]) -> None:
    """Print the guard's decision (stderr when it is a warning)."""
    line = UtilityGuard.summary(info)
    print(line, file=sys.stderr if info["status"] == "none_held" else sys.stdout, flush=True)
