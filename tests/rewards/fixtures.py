"""Shared by the reward tests: a reward server subprocess, a fake server, a recorder."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from ffjax.rewards.groupwise import group_ids_of, group_rank

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """`python -m ffjax.rewards.server ARGS` (or `python SCRIPT ARGS`) on loopback, on
    `port` (0: a free one); `url` is read from the server's start-up line."""

    def __init__(
        self, *args: str, script: str | None = None, port: int = 0, log: Path | None = None
    ):
        self.log = open(log, "a") if log else subprocess.DEVNULL
        program = [script] if script else ["-m", "ffjax.rewards.server"]
        cmd = [sys.executable, "-u", *program, "--port", str(port), *args]
        # stdout carries only the start-up line; stderr (request errors) goes to the log
        # so that an unread pipe can never fill up and block the server.
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        timer = threading.Timer(60, self.proc.kill)  # never hang the test on a stuck start
        timer.start()
        line = self.proc.stdout.readline()
        timer.cancel()
        if "http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start (exit {self.proc.wait()}): {line!r}")
        self.url = line.split()[-1]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.proc.stdout.close()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


@contextlib.contextmanager
def fake_server(
    compute: Callable[[dict], tuple[int, bytes]], health: bytes = b'{"status": "ok"}'
) -> Iterator[tuple[str, list]]:
    """A stdlib server in a thread: GET /health -> `health`; POST /compute -> the
    (status, body) of `compute(request JSON)`. Yields (url, list of requests seen)."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self._send(200, health)

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(request)
            self._send(*compute(request))

        def _send(self, status, body):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client may have timed out and left
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def rewards_reply(values) -> tuple[int, bytes]:
    return 200, json.dumps({"rewards": list(values)}).encode()


def slow(seconds: float, reply: tuple[int, bytes]) -> Callable[[dict], tuple[int, bytes]]:
    def compute(request):
        time.sleep(seconds)
        return reply

    return compute


class GroupRecorder:
    """Groupwise: brightness rank within each group / K; records the group ids it got."""

    name, kind = "group_recorder", "groupwise"
    calls: list[np.ndarray | None] = []

    def __call__(self, samples):
        GroupRecorder.calls.append(samples.group_ids)
        brightness = samples.images.astype(np.float64).mean(axis=(1, 2, 3))
        return group_rank(brightness, group_ids_of(samples)).astype(np.float32)
