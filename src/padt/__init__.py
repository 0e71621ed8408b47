"""PaDT: Patch-as-Decodable-Token on current transformers."""
