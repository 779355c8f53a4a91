"""aifab.feedback."""
