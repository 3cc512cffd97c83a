"""Readers and writers of raw input files (potentiostat logs, AFM frames)."""
