"""Taishi detectors."""
