"""Launchers for the demo and the tests (not part of the installed package)."""
