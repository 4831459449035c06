"""`python -m ffjax.train`: runs `ffjax.cli.train` (its docstring has the usage)."""

from ffjax.cli.train import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
