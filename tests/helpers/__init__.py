"""Helpers shared by the tests: generated data, tiny models, CLI and server processes."""
