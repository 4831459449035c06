"""Rewards, each registered in ffjax.registry.REWARDS by importing its module."""

from ffjax.rewards import clip_family, remote, shapes, simple  # noqa: F401  (registration side effects)
