"""`remote`: a reward computed by a server process, over the Flow-Factory HTTP protocol.

Run the reward model where its dependencies live (another venv, another GPU host),
and train against it:

    python -m ffjax.rewards.server --reward brightness --port 8000          # terminal 1
    python -m ffjax.train --config.rewards.srv.name=remote \\
        --config.rewards.srv.args.url=http://127.0.0.1:8000                   # terminal 2

Protocol (JSON only, never pickle; `PROTOCOL_VERSION` = 1):

    GET  {url}/health  -> 200 {"status": "ok", "reward": NAME, "protocol_version": 1}
    POST {url}/compute    {"prompt": [B str],
                           "image": [B base64 PNG] | null,          # images, or
                           "video": [B [T base64 PNG]] | null,      # videos
                           "metadata": [B dict], "group_ids": [B int] | null,
                           "protocol_version": 1}
                       -> 200 {"rewards": [B float | null], "protocol_version": 1}

A null (or NaN) reward marks a failed sample. Servers written for Flow-Factory ignore
the extra request fields and send no `protocol_version`, which is accepted; a reply
that names another version is an error, as is a reply `{"error": ...}`.

Failure handling: connection errors, timeouts and HTTP 5xx are retried `retries`
times with exponential backoff (`backoff_s`, 2 x, 4 x, ...), then `RemoteRewardError`
names the URL, the attempts and the last error. A 4xx, a malformed reply (not JSON,
no `rewards`, wrong length, non-numbers) or one over `max_response_bytes` fails at
once: asking again would get the same answer.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from ffjax import registry
from ffjax.rewards.base import RewardError, Samples

PROTOCOL_VERSION = 1
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_ERROR_BODY_BYTES = 4096  # of an HTTP error reply, enough for its message
HEALTH_TIMEOUT_S = 10.0  # /health answers at once; don't wait a batch's timeout_s for it


class RemoteRewardError(RewardError):
    """The reward server could not be reached or answered wrongly (one-line message)."""


class _Retryable(Exception):
    """An attempt failed in a way another attempt may not (network, timeout, 5xx)."""


def encode_png(image: np.ndarray) -> str:
    """base64 text of the PNG of one uint8[H, W, 3] image (lossless, fast level 1)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _jsonable(value: Any) -> Any:
    """json.dumps fallback for metadata: numpy scalars/arrays as lists, else str."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _one_line(text: str, limit: int = 300) -> str:
    """A server's message squeezed into one line: the trainer reports errors as one."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def request_payload(samples: Samples, rows: slice) -> dict[str, Any]:
    """The /compute JSON object for `samples[rows]` (see the module docstring)."""
    prompts = list(samples.prompts[rows])
    metadata = list(samples.metadata[rows]) if samples.metadata is not None else [{}] * len(prompts)
    payload: dict[str, Any] = {"prompt": prompts, "image": None, "video": None}
    if samples.images is not None:
        payload["image"] = [encode_png(im) for im in samples.images[rows]]
    else:
        payload["video"] = [[encode_png(f) for f in video] for video in samples.videos[rows]]
    payload["metadata"] = metadata
    ids = samples.group_ids
    payload["group_ids"] = None if ids is None else [int(i) for i in ids[rows]]
    payload["protocol_version"] = PROTOCOL_VERSION
    return payload


def parse_rewards(body: bytes, n: int) -> np.ndarray:
    """float32[n] from a /compute reply body; RemoteRewardError if it is malformed."""
    try:
        reply = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RemoteRewardError(f"reply is not JSON: {_one_line(body[:200])!r}") from None
    if not isinstance(reply, dict):
        raise RemoteRewardError(f"reply must be a JSON object, got {type(reply).__name__}")
    _check_version(reply)
    if reply.get("error"):
        raise RemoteRewardError(f"server error: {_one_line(reply['error'])}")
    if "rewards" not in reply:
        raise RemoteRewardError(f"reply has no 'rewards' (keys: {sorted(reply)})")
    rewards = reply["rewards"]
    if not isinstance(rewards, list) or len(rewards) != n:
        got = f"{len(rewards)} values" if isinstance(rewards, list) else type(rewards).__name__
        raise RemoteRewardError(f"'rewards' must be a list of {n} numbers, got {got}")
    for r in rewards:  # bool is an int to Python, never a reward
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float))):
            raise RemoteRewardError(f"'rewards' must hold numbers or null, got {r!r}")
    return np.asarray([np.nan if r is None else r for r in rewards], np.float32)


def _check_version(reply: dict[str, Any]) -> None:
    version = reply.get("protocol_version")
    if version is not None and version != PROTOCOL_VERSION:
        raise RemoteRewardError(
            f"server speaks protocol_version {version!r}, this client {PROTOCOL_VERSION};"
            " run a server and a client from the same ffjax version"
        )


@registry.REWARDS.register("remote")
class RemoteReward:
    """Scores samples by POSTing them to a reward server.

    Args:
      url: the server's base URL, e.g. "http://127.0.0.1:8000".
      timeout_s: seconds one request may take, from sending to the last reply byte.
      retries: further attempts after a failed one (network error, timeout, 5xx).
      backoff_s: wait before the first retry; doubled before each further one.
      batch_size: samples per request ("pointwise"); a "groupwise" server gets every
        sample of the call in one request, so groups stay whole.
      max_response_bytes: a longer reply is an error (a misbehaving server must not
        fill the trainer's memory).
      kind: "pointwise" or "groupwise", as the served reward.
    The constructor checks GET {url}/health (same retries, a timeout of at most
    HEALTH_TIMEOUT_S) and raises RemoteRewardError, saying how to start a server, when
    there is none; `health` keeps the server's JSON answer.
    """

    name = "remote"

    def __init__(
        self,
        url: str,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        batch_size: int = 16,
        max_response_bytes: int = 16 * 2**20,
        kind: str = "pointwise",
    ):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise RemoteRewardError(f"url must be http(s)://host:port, got {url!r}")
        if kind not in ("pointwise", "groupwise"):
            raise RemoteRewardError(f"kind must be 'pointwise' or 'groupwise', got {kind!r}")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or batch_size < 1:
            raise RemoteRewardError(
                "need timeout_s > 0, retries >= 0, backoff_s >= 0 and batch_size >= 1, got"
                f" {timeout_s}, {retries}, {backoff_s}, {batch_size}"
            )
        self.url = url.rstrip("/")
        self.kind = kind
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), int(retries), backoff_s
        self.batch_size, self.max_response_bytes = int(batch_size), int(max_response_bytes)
        # A loopback server must not be reached through an HTTP(S)_PROXY of the
        # environment (a cluster proxy would answer for it, or hang).
        handlers = [urllib.request.ProxyHandler({})] if parsed.hostname in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)
        self.health = self._check_health()

    def __call__(self, samples: Samples) -> np.ndarray:
        """float32[B] rewards for `samples`, in `batch_size` requests (NaN = failed)."""
        n = len(samples)
        step = n if self.kind == "groupwise" else self.batch_size
        out = [np.zeros(0, np.float32)]
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            body = json.dumps(request_payload(samples, rows), default=_jsonable).encode()
            reply = self._request("/compute", body)
            try:
                out.append(parse_rewards(reply, rows.stop - rows.start))
            except RemoteRewardError as e:
                raise RemoteRewardError(f"reward server {self.url}/compute: {e}") from None
        return np.concatenate(out)

    def _check_health(self) -> dict[str, Any]:
        try:
            body = self._request("/health", timeout_s=min(self.timeout_s, HEALTH_TIMEOUT_S))
        except RemoteRewardError as e:
            raise RemoteRewardError(
                f"{e}. Is the reward server up? Start one with `python -m ffjax.rewards.server"
                f" --reward NAME --port {urllib.parse.urlparse(self.url).port or 80}`"
                " (NAME: a registered reward or package.module:Class)"
            ) from None
        try:
            reply = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}  # a plain-text "ok" from another framework's server is healthy
        if isinstance(reply, dict):
            try:
                _check_version(reply)
            except RemoteRewardError as e:
                raise RemoteRewardError(f"reward server {self.url}/health: {e}") from None
            return reply
        return {}

    def _request(
        self, path: str, body: bytes | None = None, timeout_s: float | None = None
    ) -> bytes:
        """The reply body of GET (body None) / POST `path`, retried as documented."""
        url = self.url + path
        timeout_s = timeout_s or self.timeout_s
        attempts = self.retries + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return self._attempt(url, body, timeout_s)
            except _Retryable as e:
                last = str(e)
                logging.warning(
                    "reward server %s: attempt %d/%d: %s", url, attempt + 1, attempts, e
                )
        raise RemoteRewardError(
            f"reward server {url} failed {attempts} attempt(s) (timeout {timeout_s:g} s"
            f" each); last error: {last}"
        )

    def _attempt(self, url: str, body: bytes | None, timeout_s: float) -> bytes:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=body, headers=headers)
        deadline = time.monotonic() + timeout_s
        try:
            with self._opener.open(request, timeout=timeout_s) as reply:
                return self._read(reply, url, deadline)
        except urllib.error.HTTPError as e:  # before URLError: it is one
            message = _error_message(e)
            if e.code >= 500:
                raise _Retryable(f"HTTP {e.code}: {message}") from None
            hint = (
                " (lower batch_size or raise the server's --max-body-bytes)"
                if e.code == 413
                else ""
            )
            raise RemoteRewardError(
                f"reward server {url} refused the request: HTTP {e.code}: {message}{hint}"
            ) from None
        except urllib.error.URLError as e:
            raise _Retryable(f"{type(e.reason).__name__}: {e.reason}") from None
        except (OSError, http.client.HTTPException) as e:  # timeouts, resets, cut replies
            raise _Retryable(f"{type(e).__name__}: {e}") from None

    def _read(self, reply, url: str, deadline: float) -> bytes:
        """The body, at most max_response_bytes, by the deadline (TimeoutError: retry)."""
        limit = self.max_response_bytes
        too_long = RemoteRewardError(
            f"reward server {url}: reply longer than max_response_bytes={limit}"
        )
        length = reply.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_long
        chunks, size = [], 0
        while chunk := reply.read(min(65536, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise too_long
            if time.monotonic() > deadline:  # a server trickling bytes
                raise TimeoutError("reply not complete within the timeout")
        return b"".join(chunks)


def _error_message(error: urllib.error.HTTPError) -> str:
    """The `error` of a JSON error reply, else the start of its text."""
    try:
        text = error.read(_ERROR_BODY_BYTES).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return error.reason or ""
    try:
        reply = json.loads(text)
        if isinstance(reply, dict) and "error" in reply:
            return _one_line(reply["error"])
    except json.JSONDecodeError:
        pass
    return _one_line(text) or str(error.reason)
