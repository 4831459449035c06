"""Sample: `python -m ffjax.sample` (or `ffjax-sample`): images (or videos) from a run.

    python -m ffjax.sample --config configs/demo.py:nft --checkpoint /tmp/run \
        --prompts assets/demo/prompts --out /tmp/run/sampled --num_per_prompt 4

`--config` must be the recipe the run was trained with (and its `--config.*`
overrides): it builds the model the checkpoint is restored into. `--checkpoint` is a
run's workdir (its latest checkpoint), WORKDIR/checkpoints or WORKDIR/checkpoints/<epoch>;
`--weights` picks the EMA (the default when the checkpoint has one), the current
weights, or `base` (the pretrained model; no checkpoint needed). Writes
`{index:05d}_{k}.png` per image (`.gif` per video), `prompts.jsonl` and `grid.png` to
`--out` (ffjax/sample.py documents the noise, batching and multi-process rules).
A bad argument or run folder exits 2; a model folder, config.json or weights file that
cannot be used exits 1, each with one line.
"""

from __future__ import annotations

from absl import flags, logging

from ffjax.cli import train as train_cli
from ffjax.cli.common import fail
from ffjax.errors import FfjaxError

PROG = "ffjax.sample"
_FLAGS: dict[str, flags.FlagHolder] = {}


def define_flags() -> None:
    """Defines the sampling flags once (--config and the rest come from ffjax.cli.train)."""
    from ffjax.run_folder import WEIGHTS

    if _FLAGS:
        return
    _FLAGS["checkpoint"] = flags.DEFINE_string(
        "checkpoint",
        None,
        "Run workdir (latest checkpoint), WORKDIR/checkpoints, or WORKDIR/checkpoints/<epoch>.",
    )
    _FLAGS["prompts"] = flags.DEFINE_string(
        "prompts",
        None,
        "Prompt file (.txt/.jsonl), dataset folder (split 'test', else 'train') or tfds: spec.",
    )
    _FLAGS["out"] = flags.DEFINE_string("out", None, "Output folder for the images.")
    _FLAGS["weights"] = flags.DEFINE_enum(
        "weights",
        None,
        list(WEIGHTS),
        "Which weights: ema (default if the checkpoint has one), current, or base (pretrained).",
    )
    _FLAGS["num_per_prompt"] = flags.DEFINE_integer(
        "num_per_prompt", 1, "Images per prompt.", lower_bound=1
    )
    _FLAGS["seed"] = flags.DEFINE_integer(
        "seed", None, "Noise seed (default: config.seed).", lower_bound=0
    )
    flags.mark_flags_as_required(["prompts", "out"])


def _parse_flags(argv: list[str]) -> list[str]:
    overrides = _parse_flags.overrides
    _parse_flags.config, remaining = train_cli.parse_config_flags(argv, overrides, __doc__)
    return remaining


_parse_flags.overrides = []


def main(argv: list[str]) -> None:
    """The command after flag parsing (absl's `app.run`): sample and print the summary."""
    del argv  # positional arguments were refused by _parse_flags
    from ffjax import sample

    if not flags.FLAGS["verbosity"].present:  # Orbax logs every restore at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        summary = sample.sample(
            _parse_flags.config,
            checkpoint=_FLAGS["checkpoint"].value,
            prompts=_FLAGS["prompts"].value,
            out=_FLAGS["out"].value,
            weights=_FLAGS["weights"].value,
            num_per_prompt=_FLAGS["num_per_prompt"].value,
            seed=_FLAGS["seed"].value,
        )
    except FileNotFoundError as e:  # a prompt file or folder named by a flag
        fail(str(e), 2)
    except FfjaxError as e:  # a ConfigError or run-folder problem exits 2, model files 1
        fail(str(e), e.exit_code)
    print(summary)


def run() -> None:
    """Console-script entry point (`ffjax-sample`, `python -m ffjax.sample`); it takes
    the train flags too (--config and its overrides, --workdir, ...)."""
    define_flags()
    train_cli.run_with_config(PROG, main, _parse_flags)
