"""Training PaDT: per-step sample construction (VRT sampling, completions) and the recipe around the losses."""
