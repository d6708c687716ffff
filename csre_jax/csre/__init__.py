"""csre."""
