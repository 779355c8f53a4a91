"""aifab.optimize."""
