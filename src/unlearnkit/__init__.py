"""unlearnkit: make a causal language model forget specific outputs (Yao, Xu, Liu 2023)."""

__version__ = "0.1.0"
