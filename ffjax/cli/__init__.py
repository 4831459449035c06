"""The command lines: train, export, convert and the reward server on absl flags, with one
`fail()` (`ffjax.cli.common`). Library modules never import this package; the
`python -m ffjax.<command>` modules and the console scripts (`ffjax-train`, ...) call it.
"""
