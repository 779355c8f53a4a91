"""aifab.core."""
