"""aifab.models."""
