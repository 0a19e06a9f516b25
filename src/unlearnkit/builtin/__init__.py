"""Builtin (vendored) datasets, the builtin harm judge weights, and credits (see builtin/data/CREDITS.md)."""
