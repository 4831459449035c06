"""Serve a reward over HTTP: `python -m ffjax.rewards.server` (or `ffjax-reward-server`).

    python -m ffjax.rewards.server --reward brightness --port 8000
    python -m ffjax.rewards.server --reward my_pkg.rewards:Aesthetic --args '{"size": 224}' \\
        --host 127.0.0.1 --port 8000 --max-body-bytes 67108864

--reward is a registered reward name or `package.module:Class`, built with the JSON
object --args as keyword arguments. On start the server prints
`ffjax reward server: NAME on http://HOST:PORT` (--port 0 picks a free port) and serves
until interrupted; the protocol and its errors are in `ffjax.rewards.server`. It has no
authentication and binds 127.0.0.1 unless --host says otherwise. A bad flag, --args
value or reward exits 2 with one line on stderr.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from ffjax.cli.common import fail, parse_flags, set_prog

PROG = "ffjax.rewards.server"


def _flags() -> flags.FlagValues:
    """The command's flags, in a FlagValues of their own (`common.parse_flags`)."""
    from ffjax.rewards.server import DEFAULT_MAX_BODY_BYTES

    fv = flags.FlagValues()
    kw = dict(flag_values=fv)
    flags.DEFINE_string("reward", None, "registered reward name or package.module:Class", **kw)
    flags.DEFINE_string("args", "{}", "JSON object of keyword arguments for the reward", **kw)
    flags.DEFINE_string("host", "127.0.0.1", "address to bind (default: loopback only)", **kw)
    flags.DEFINE_integer("port", 8000, "port (0: any free port)", **kw)
    flags.DEFINE_integer("max-body-bytes", DEFAULT_MAX_BODY_BYTES, "larger requests get 413", **kw)
    flags.mark_flag_as_required("reward", flag_values=fv)
    return fv


def main(argv: list[str] | None = None) -> int:
    """Builds the reward and serves it until interrupted (`argv`: the arguments, default
    sys.argv[1:]); returns 0, or exits through `fail` with one line on stderr."""
    set_prog(PROG)
    fv = _flags()
    parse_flags(fv, [PROG, *(sys.argv[1:] if argv is None else argv)], __doc__)
    from ffjax.rewards.server import RewardServer, build_reward

    try:
        args = json.loads(fv.args)
        if not isinstance(args, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        fail(f"--args must be a JSON object of keyword arguments: {e}", 2)
    try:
        reward = build_reward(fv.reward, args)
    except Exception as e:  # a bad name or bad arguments: say which, no traceback
        fail(f"cannot build reward {fv.reward!r}: {e}", 2)
    server = RewardServer((fv.host, fv.port), reward, fv.reward, fv["max-body-bytes"].value)
    host, port = server.server_address[:2]
    print(f"ffjax reward server: {fv.reward} on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def run() -> None:
    """Console-script entry point (`ffjax-reward-server`, `python -m ffjax.rewards.server`)."""
    sys.exit(main())
