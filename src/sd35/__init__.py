"""sd35: a Python engine for Stable Diffusion 3.5 Medium. Importing it imports nothing heavy."""

__version__ = "0.1.0"
