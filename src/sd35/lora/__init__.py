"""LoRA files: format detection, key mapping to sd35 weights, merging and on-the-fly application."""
