"""aifab.evaluate."""
