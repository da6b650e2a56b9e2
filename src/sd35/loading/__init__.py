"""Checkpoint files: the only package that knows file formats, key prefixes and key names.

Entry points: `load.load_component(path, component, dtype=, device=)`, `detect.detect_components(path)`,
`report.inspect_paths(paths)`, `tiny.make_tiny(out_dir)`; errors in `errors` (all CheckpointError).
"""
