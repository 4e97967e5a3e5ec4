"""Fixtures of the sim runner tests: sim files and helpers."""
