"""Helpers of ``python -m selfreward_jax.benchmark`` (one module per measured area)."""
