"""aifab.pipeline."""
