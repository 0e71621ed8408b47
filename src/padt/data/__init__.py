"""Datasets for PaDT: the record schema of docs/method.md §9, patch assignment and synthetic scenes."""
