"""`python -m ffjax.convert`: runs `ffjax.cli.convert` (its docstring has the usage); the
conversion itself is `ffjax.diffusers_convert`."""

from ffjax.cli.convert import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
