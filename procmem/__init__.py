"""procmem: Procedural Memory Distillation.

An agent solves verifiable tasks with procedural memory; an offline job distils what memory
taught into a LoRA adapter that needs no memory. See README.md for the map of the packages.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
