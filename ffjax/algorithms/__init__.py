"""RL algorithms, each registered in ffjax.registry.ALGORITHMS by importing its module."""

from ffjax.algorithms import awm, grpo, nft  # noqa: F401  (registration side effects)
