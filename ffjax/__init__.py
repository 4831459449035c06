"""ffjax: reinforcement learning for flow-matching generators in JAX/Flax."""

__version__ = "0.1.0"
