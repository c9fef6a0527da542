"""selfreward_jax"""
