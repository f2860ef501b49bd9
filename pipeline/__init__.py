"""Taishi pipeline."""
