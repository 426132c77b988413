"""Reusable layers shared by several models."""
