"""Stages and rounds: a recipe is a list of stages, run in order, ``rounds`` times."""

from tempering.pipeline.run import STAGE_RUNNERS, run_pipeline, stage_recipe

__all__ = ["STAGE_RUNNERS", "run_pipeline", "stage_recipe"]
