"""Typed config groups (re-exported from `sampling.configlib`, a leaf
module both halves use, so `sampling/` imports nothing of `ttt/`)."""

from sampling.configlib import from_config, group  # noqa: F401
