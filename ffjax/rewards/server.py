"""Serve a reward over HTTP, for the `remote` reward (`ffjax.rewards.remote`) or Flow-Factory.

The command line (`ffjax.cli.reward_server`, also `ffjax-reward-server`):

    python -m ffjax.rewards.server --reward brightness --port 8000
    python -m ffjax.rewards.server --reward my_pkg.rewards:Aesthetic --args '{"size": 224}' \\
        --host 127.0.0.1 --port 8000 --max-body-bytes 67108864

--reward is a registered reward name or `package.module:Class`, built with the JSON
object --args as keyword arguments. On start the server prints
`ffjax reward server: NAME on http://HOST:PORT` (--port 0 picks a free port).

Endpoints (the protocol is documented in `ffjax.rewards.remote`):
  GET  /health   -> {"status": "ok", "reward": NAME, "protocol_version": 1}
  POST /compute  -> {"rewards": [float | null], "protocol_version": 1}; a non-finite
                    score becomes null (= a failed sample)
Errors are JSON `{"error": message}`: 400 malformed request, 404 unknown path, 411 no
Content-Length, 413 body over --max-body-bytes, 415 not application/json, 500 the
reward raised or returned the wrong shape.

Security: requests are JSON and PNG only (never pickle), bodies are capped, and the
server has no authentication, so it binds 127.0.0.1 unless --host says otherwise;
expose it only on a network you trust. Requests are handled in threads
(ThreadingHTTPServer; /health answers while a batch is scored), the reward itself is
called under a lock, one batch at a time, as reward models are rarely thread-safe.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

from ffjax import registry
from ffjax.rewards.base import Samples, call_reward
from ffjax.rewards.remote import PROTOCOL_VERSION

DEFAULT_MAX_BODY_BYTES = 64 * 2**20
_DRAIN_SECONDS = 5.0  # how long a refused (413) body is read and dropped, at most


class BadRequest(ValueError):
    """A /compute request that does not follow the protocol (answered with 400)."""


def decode_png(text: Any, where: str) -> np.ndarray:
    """uint8[H, W, 3] from base64 PNG (or any format PIL reads) text."""
    if not isinstance(text, str):
        raise BadRequest(f"{where} must be a base64 string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), np.uint8)
    except (binascii.Error, OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadRequest(f"{where} is not a base64 image: {e}") from None


def _stack(frames: list[np.ndarray], what: str) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise BadRequest(f"all {what} must have one size, got {sorted(shapes)}")
    return np.stack(frames)


def _list(request: dict, key: str, n: int | None, item: type | None = None) -> list | None:
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or (n is not None and len(value) != n):
        want = f"a list of {n}" if n is not None else "a list"
        raise BadRequest(f'"{key}" must be {want}, got {_describe(value)}')
    if item is not None and not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
        raise BadRequest(f'"{key}" must hold {item.__name__} values')
    return value


def _describe(value: Any) -> str:
    return f"{len(value)} items" if isinstance(value, list) else type(value).__name__


def parse_request(body: bytes) -> Samples:
    """Samples from a /compute body; BadRequest naming the first problem."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"body is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"body must be a JSON object, got {type(request).__name__}")
    version = request.get("protocol_version")
    if version is not None and version != PROTOCOL_VERSION:
        raise BadRequest(
            f"protocol_version {version!r} requested; this server speaks {PROTOCOL_VERSION}"
        )
    prompts = _list(request, "prompt", None, str)
    if not prompts:
        raise BadRequest('"prompt" must be a non-empty list of strings')
    n = len(prompts)
    images, videos = _list(request, "image", n), _list(request, "video", n)
    if (images is None) == (videos is None):
        raise BadRequest(
            'give exactly one of "image" (a list of base64 PNGs) or "video" (a list of lists'
            " of base64 PNG frames), one per prompt"
        )
    metadata = _list(request, "metadata", n, dict)
    group_ids = _list(request, "group_ids", n, int)
    if images is not None:
        pixels = {
            "images": _stack([decode_png(s, f"image[{i}]") for i, s in enumerate(images)], "images")
        }
    else:
        clips = []
        for i, frames in enumerate(videos):
            if not isinstance(frames, list) or not frames:
                raise BadRequest(f"video[{i}] must be a non-empty list of base64 PNG frames")
            clips.append(
                _stack([decode_png(s, f"video[{i}][{t}]") for t, s in enumerate(frames)], "frames")
            )
        pixels = {"videos": _stack(clips, "videos")}
    return Samples(
        prompts,
        metadata=metadata if metadata is not None else [{} for _ in prompts],
        group_ids=None if group_ids is None else np.asarray(group_ids, np.int64),
        **pixels,
    )


class RewardServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that holds one reward and its lock."""

    daemon_threads = True  # a hung client must not keep the process alive on exit

    def __init__(self, address: tuple[str, int], reward: Any, name: str, max_body_bytes: int):
        super().__init__(address, _Handler)
        self.reward, self.reward_name = reward, name
        self.max_body_bytes = max_body_bytes
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer

    def do_GET(self):
        if self.path.rstrip("/") != "/health":
            return self._reply(404, {"error": f"no GET {self.path}; try GET /health"})
        self._reply(
            200,
            {
                "status": "ok",
                "reward": self.server.reward_name,
                "protocol_version": PROTOCOL_VERSION,
            },
        )

    def do_POST(self):
        if self.path.rstrip("/") != "/compute":
            return self._reply(404, {"error": f"no POST {self.path}; try POST /compute"})
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self.close_connection = True  # the body's end is unknown: nothing more to read
            return self._reply(411, {"error": "a Content-Length header is required"})
        length, cap = int(length), self.server.max_body_bytes
        if length > cap:
            self._reply(413, {"error": f"body of {length} bytes is over the server's {cap}"})
            return self._drain(length)
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return self._reply(
                415, {"error": f"Content-Type must be application/json, got {content_type!r}"}
            )
        try:
            samples = parse_request(body)
        except BadRequest as e:
            return self._reply(400, {"error": str(e)})
        self._score(samples)

    def _score(self, samples: Samples) -> None:
        name = self.server.reward_name
        try:
            with self.server.lock:
                scores = call_reward(self.server.reward, samples)
        except Exception as e:  # the reward's bug: report it, keep serving
            traceback.print_exc()
            return self._reply(500, {"error": f"reward {name!r} raised {type(e).__name__}: {e}"})
        if scores.shape != (len(samples),):
            return self._reply(
                500,
                {
                    "error": f"reward {name!r} returned {scores.shape[0]} scores for {len(samples)} samples"
                },
            )
        rewards = [float(s) if np.isfinite(s) else None for s in scores]
        self._reply(200, {"rewards": rewards, "protocol_version": PROTOCOL_VERSION})

    def _reply(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _drain(self, length: int) -> None:
        """Reads and drops a refused body for a bounded time, then closes.

        Closing a socket with unread data makes the kernel send a reset, and the client,
        still sending, would see "connection reset" instead of the 413 reply.
        """
        self.close_connection = True
        self.connection.settimeout(1.0)
        deadline = time.monotonic() + _DRAIN_SECONDS
        try:
            while length > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)
        except OSError:
            pass

    def log_request(self, code="-", size="-"):
        if not isinstance(code, int) or code >= 400:  # one line per scored batch is noise
            super().log_request(code, size)


def build_reward(name: str, args: dict[str, Any]) -> Any:
    """The reward `name` (registered or package.module:Class) built with `args`."""
    import ffjax.rewards  # noqa: F401  (registers the built-in rewards)

    return registry.REWARDS.get(name)(**args)


if __name__ == "__main__":  # the command line is ffjax.cli.reward_server
    from ffjax.cli.reward_server import run

    run()
