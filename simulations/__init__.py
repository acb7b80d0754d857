"""Simulating many partners on one machine with Flower's simulation engine, and the CLI."""
