"""Datasets for PaDT: the record schema of padt-method.md §6, patch assignment and synthetic scenes."""
