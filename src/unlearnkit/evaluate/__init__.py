"""Evaluation: batched generation, harm judges, pure metrics, and the eval runner."""
