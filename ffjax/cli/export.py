"""Export: `python -m ffjax.export --workdir RUN_DIR --out PATH` (or `ffjax-export`).

    python -m ffjax.export --workdir RUN_DIR [--epoch N] [--weights ema|current] --out PATH

A LoRA run becomes a Diffusers/PEFT safetensors file (`pipe.load_lora_weights(PATH)`),
a full fine-tune a Diffusers transformer folder; see `ffjax.diffusers_export` for the
layouts and two-expert (Wan 2.2 A14B) runs. A bad argument or a run folder without what
is asked for exits 2; a model folder, config.json or checkpoint that cannot be read
exits 1; both with one line on stderr.
"""

from __future__ import annotations

import sys

from absl import flags

from ffjax.cli.common import fail, parse_flags, set_prog
from ffjax.errors import FfjaxError

PROG = "ffjax.export"


def _flags() -> flags.FlagValues:
    """The command's flags, in a FlagValues of their own (`common.parse_flags`)."""
    from ffjax.diffusers_export import WEIGHTS

    fv = flags.FlagValues()
    kw = dict(flag_values=fv)
    flags.DEFINE_string(
        "workdir", None, "the run's workdir (or WORKDIR/checkpoints[/<epoch>])", **kw
    )
    flags.DEFINE_integer("epoch", None, "checkpoint epoch (default: latest)", **kw)
    flags.DEFINE_enum(
        "weights", None, list(WEIGHTS), "ema (default when the checkpoint has one) or current",
        **kw,
    )  # fmt: skip
    flags.DEFINE_string(
        "out", None, "LoRA: FILE.safetensors or a folder (two experts: a second file with"
        " _transformer_2 before .safetensors); full: a folder (two experts: its"
        " transformer/ and transformer_2/)", **kw,
    )  # fmt: skip
    flags.DEFINE_string("model_path", None, "the run's pipeline folder, if it moved", **kw)
    flags.DEFINE_string(
        "dtype", None, "cast the tensors (bfloat16, float16); default float32", **kw
    )
    flags.mark_flags_as_required(["workdir", "out"], flag_values=fv)
    return fv


def main(argv: list[str] | None = None) -> int:
    """Exports a run (`argv`: the arguments, default sys.argv[1:]); returns 0, or exits
    through `fail` with one line on stderr."""
    set_prog(PROG)
    fv = _flags()
    parse_flags(fv, [PROG, *(sys.argv[1:] if argv is None else argv)], __doc__)
    from absl import logging

    from ffjax.diffusers_export import export_run

    # Orbax logs every restore at INFO and a read-only restore at WARNING: noise here.
    logging.set_verbosity(logging.ERROR)
    try:
        print(export_run(fv.workdir, fv.out, epoch=fv.epoch, weights=fv.weights,
                         model_path=fv.model_path, dtype=fv.dtype))  # fmt: skip
    except FfjaxError as e:
        fail(str(e), e.exit_code)
    return 0


def run() -> None:
    """Console-script entry point (`ffjax-export`, `python -m ffjax.export`)."""
    sys.exit(main())
