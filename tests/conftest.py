"""Shared fixtures: tiny real data written to tmp_path. Nothing here needs ../shared or the network."""

from __future__ import annotations

import os

# Tests never reach the network: Hugging Face libraries must load only local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
