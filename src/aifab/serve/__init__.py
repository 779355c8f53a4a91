"""aifab.serve."""
