"""aifab.ui."""
