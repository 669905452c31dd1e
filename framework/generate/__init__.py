"""Generation behind one interface: :class:`Generator` and its first backend (transformers)."""

from tempering.generate.base import GenerationParams, Generator
from tempering.generate.hf import HFGenerator

__all__ = ["GenerationParams", "Generator", "HFGenerator"]
