"""One process of `python -m ffjax.sample` in a job of --num-processes on 127.0.0.1
(tests/parallel/test_sample_multiprocess.py): initialises `jax.distributed` (Gloo CPU
collectives) from its arguments, then runs the CLI on the arguments after `--`:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \\
        python -m tests.parallel.multiprocess_sample --num-processes 2 --process-id 0 \\
        --port 12345 -- --config RECIPE --checkpoint RUN --prompts FILE --out DIR

(A real job gets the same from its environment: SLURM, Open MPI, a TPU pod.)
"""

from __future__ import annotations

import argparse
import sys

import jax


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-processes", type=int, required=True)
    p.add_argument("--process-id", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("sample_args", nargs=argparse.REMAINDER, help="-- then ffjax.sample's")
    args = p.parse_args()
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=60,
    )
    from ffjax.cli import sample

    rest = args.sample_args[1:] if args.sample_args[:1] == ["--"] else args.sample_args
    sys.argv = ["ffjax.sample", *rest]
    sample.run()


if __name__ == "__main__":
    main()
