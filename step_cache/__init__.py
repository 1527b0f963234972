"""step-cache."""
