"""Attacks on forgetting (`unlearnkit attack`): quantization (quantize.py), relearning (relearn.py),
jailbreak and paraphrased prompts (prompts.py), the command (run.py) and its report (report.py)."""
