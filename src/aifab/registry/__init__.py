"""aifab.registry."""
