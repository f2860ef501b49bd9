"""Taishi collectors."""
