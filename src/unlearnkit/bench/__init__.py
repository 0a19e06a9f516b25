"""Benchmarks run end to end: ``unlearnkit bench NAME`` (today: ``tofu``)."""
