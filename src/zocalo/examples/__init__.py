"""Example services and the recipe `zocalo demo` runs."""
