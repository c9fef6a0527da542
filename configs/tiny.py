"""The embedded default (``selfreward_jax/default_config.py``): tiny model, synthetic world, CPU."""
from selfreward_jax.default_config import get_config  # noqa: F401
