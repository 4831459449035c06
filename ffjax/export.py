"""`python -m ffjax.export`: runs `ffjax.cli.export` (its docstring has the usage); the
export itself is `ffjax.diffusers_export`."""

from ffjax.cli.export import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
