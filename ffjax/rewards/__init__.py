"""Rewards, each registered in ffjax.registry.REWARDS by importing its module."""

from ffjax.rewards import remote, shapes, simple  # noqa: F401  (registration side effects)
