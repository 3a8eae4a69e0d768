"""Helpers the tests share: stand-in models and pools, fault injection, process and browser checks."""
