"""Retrieval models that score by one inner product between a user tower and an item tower (two-tower)."""
