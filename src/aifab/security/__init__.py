"""aifab.security."""
