"""Recipes: the step graphs that route messages between services."""

from zocalo.recipe.model import Recipe
from zocalo.recipe.parameters import substitute

__all__ = ["Recipe", "substitute"]
