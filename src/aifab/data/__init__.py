"""aifab.data."""
