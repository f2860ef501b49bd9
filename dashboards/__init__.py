"""Taishi dashboards."""
