"""`python -m ffjax.train`: runs `ffjax.cli.train` (its docstring has the usage).

`load_config`, `split_overrides` and `_define_flags` stay importable from here while
`ffjax.sample` parses its flags through them.
"""

from ffjax.cli.common import split_overrides
from ffjax.cli.train import define_flags as _define_flags
from ffjax.cli.train import load_config, main, run

__all__ = ["_define_flags", "load_config", "main", "run", "split_overrides"]

if __name__ == "__main__":
    run()
