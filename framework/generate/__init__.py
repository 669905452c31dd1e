"""Generation behind one interface: :class:`Generator` and its first backend (transformers)."""

from tempering.generate.base import Completion, GenerationContext, GenerationParams, Generator
from tempering.generate.hf import HFGenerator

__all__ = ["Completion", "GenerationContext", "GenerationParams", "Generator", "HFGenerator"]
