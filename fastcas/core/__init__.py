"""Lowest layer: keyed random draws (rng), atomic file writes (io), device selection (device), the error types (errors).
Imports nothing else from fastcas."""
