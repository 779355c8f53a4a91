"""aifab.train."""
