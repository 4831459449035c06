"""Convert: Diffusers folders <-> ffjax (Orbax) checkpoints (or `ffjax-convert`).

    python -m ffjax.convert --model flux1 --from-diffusers /ckpt/FLUX.1-dev --out /ckpt/flux-jax
    python -m ffjax.convert --model flux1 --to-diffusers /ckpt/flux-jax --out /ckpt/FLUX.1-dev-back

Exactly one of --from-diffusers / --to-diffusers. Prints one summary line per component
and then `{"out": OUT}`. A bad argument exits 2; a folder that is not a checkpoint of
--model, a config.json or a weights file that cannot be read exits 1; both with one
line on stderr (`ffjax.diffusers_convert` has the layouts).
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from ffjax.cli.common import fail, parse_flags, set_prog
from ffjax.errors import FfjaxError

PROG = "ffjax.convert"


def _flags() -> flags.FlagValues:
    """The command's flags, in a FlagValues of their own (`common.parse_flags`)."""
    from ffjax.diffusers_convert import CONVERTERS

    fv = flags.FlagValues()
    kw = dict(flag_values=fv)
    flags.DEFINE_string("model", None, f"model family: {', '.join(sorted(CONVERTERS))}", **kw)
    flags.DEFINE_string("from-diffusers", None, "Diffusers pipeline or component folder", **kw)
    flags.DEFINE_string(
        "to-diffusers", None, "ffjax checkpoint folder written by --from-diffusers", **kw
    )
    flags.DEFINE_string("out", None, "output folder", **kw)
    flags.DEFINE_string(
        "dtype", None, "cast parameters (float32, bfloat16); default keeps them", **kw
    )
    flags.mark_flags_as_required(["model", "out"], flag_values=fv)
    flags.mark_flags_as_mutual_exclusive(
        ["from-diffusers", "to-diffusers"], required=True, flag_values=fv
    )
    return fv


def main(argv: list[str] | None = None) -> int:
    """Converts (`argv`: the arguments, default sys.argv[1:]); returns 0, or exits
    through `fail` with one line on stderr."""
    set_prog(PROG)
    fv = _flags()
    parse_flags(fv, [PROG, *(sys.argv[1:] if argv is None else argv)], __doc__)
    from ffjax.diffusers_convert import from_diffusers, to_diffusers

    src, dst = fv["from-diffusers"].value, fv["to-diffusers"].value
    try:
        if src:
            lines = from_diffusers(fv.model, src, fv.out, fv.dtype)
        else:
            lines = to_diffusers(fv.model, dst, fv.out, fv.dtype)
    except FfjaxError as e:
        fail(str(e), e.exit_code)
    for line in lines:
        print(line)
    print(json.dumps({"out": os.path.abspath(fv.out)}))
    return 0


def run() -> None:
    """Console-script entry point (`ffjax-convert`, `python -m ffjax.convert`)."""
    sys.exit(main())
