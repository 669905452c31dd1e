"""Generation behind one interface: :class:`Generator` and its first backend (transformers)."""

from tempering.generate.base import Completion, GenerationParams, Generator
from tempering.generate.hf import HFGenerator

__all__ = ["Completion", "GenerationParams", "Generator", "HFGenerator"]
