"""The `remote` reward against a real `ffjax.rewards.server` process and a fake server."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from ffjax import registry
from ffjax.rewards import simple  # noqa: F401  (registers brightness)
from ffjax.rewards.base import Samples
from ffjax.rewards.remote import PROTOCOL_VERSION, RemoteReward, RemoteRewardError, encode_png
from tests.rewards.fixtures import ServerProcess, fake_server, rewards_reply, slow

CAP = 200_000  # the brightness server's --max-body-bytes
FAST = dict(retries=2, backoff_s=0.05, timeout_s=5.0)


@pytest.fixture(scope="module")
def brightness_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "stderr.txt"
    server = ServerProcess("--reward", "brightness", "--max-body-bytes", str(CAP), log=log)
    yield server
    server.close()


def _images(n, h=8, w=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _samples(n=2, **kw):
    return Samples([f"prompt {i}" for i in range(n)], images=_images(n), **kw)


def _post(url, body: bytes, content_type="application/json"):
    """(status, reply JSON) of a raw POST."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- real server


def test_remote_equals_local_brightness_exactly(brightness_server):
    remote = registry.REWARDS.get("remote")(brightness_server.url, batch_size=3, **FAST)
    assert remote.health == {"status": "ok", "reward": "brightness", "protocol_version": 1}
    local = registry.REWARDS.get("brightness")()
    images = Samples(
        [f"p{i}" for i in range(7)], images=_images(7), metadata=[{"i": i} for i in range(7)]
    )
    np.testing.assert_array_equal(remote(images), local(images))  # 7 = 3 + 3 + 1 requests
    videos = Samples(["a", "b"], videos=_images(6, seed=1).reshape(2, 3, 8, 12, 3))
    np.testing.assert_array_equal(remote(videos), local(videos))
    assert remote(Samples([], images=_images(0))).shape == (0,)


def test_server_answers_malformed_requests_with_json_errors(brightness_server):
    url = brightness_server.url + "/compute"
    good = json.loads(json.dumps({"prompt": ["a"], "image": [encode_png(_images(1)[0])]}))
    cases = {
        b"not json": "not JSON",
        b"[1, 2]": "JSON object",
        json.dumps({"prompt": ["a"]}).encode(): "exactly one of",
        json.dumps({**good, "prompt": ["a", "b"]}).encode(): "list of 2",
        json.dumps({**good, "image": ["%%%"]}).encode(): r"image\[0\] is not a base64 image",
        json.dumps({**good, "metadata": [1]}).encode(): "dict",
        json.dumps({**good, "protocol_version": 7}).encode(): "protocol_version 7",
    }
    for body, message in cases.items():
        status, reply = _post(url, body)
        assert status == 400 and re.search(message, reply["error"]), (body, status, reply)
    assert _post(url, json.dumps(good).encode(), "text/plain")[0] == 415
    assert _post(brightness_server.url + "/nope", b"{}")[0] == 404
    status, reply = _post(url, json.dumps({**good, "video": None, "x": 1}).encode())
    assert status == 200 and reply["protocol_version"] == PROTOCOL_VERSION  # extras ignored


def test_request_over_the_body_cap_gets_413(brightness_server):
    status, reply = _post(brightness_server.url + "/compute", b" " * (CAP + 1))
    assert status == 413 and str(CAP) in reply["error"]
    remote = RemoteReward(brightness_server.url, batch_size=64, **FAST)
    big = Samples(["p"] * 4, images=_images(4, 160, 160))  # ~4 x 77 kB of PNG > CAP
    with pytest.raises(RemoteRewardError, match="HTTP 413.*lower batch_size"):
        remote(big)
    assert len(remote(Samples(["p"], images=_images(1, 160, 160)))) == 1  # one fits


def test_killed_server_is_retried_then_a_clear_error(tmp_path):
    server = ServerProcess("--reward", "brightness", log=tmp_path / "stderr.txt")
    try:
        remote = RemoteReward(server.url, **FAST)
        assert np.isfinite(remote(_samples())).all()
        server.kill()
        t0 = time.perf_counter()
        with pytest.raises(RemoteRewardError) as e:
            remote(_samples())
        assert time.perf_counter() - t0 >= 0.05 + 0.1  # two backoffs
        message = str(e.value)
        assert f"{server.url}/compute failed 3 attempt(s)" in message and "Connection" in message
        assert "\n" not in message
    finally:
        server.close()


def test_no_server_at_start_says_how_to_start_one():
    port = _free_port()
    with pytest.raises(
        RemoteRewardError,
        match=rf"127.0.0.1:{port}/health failed 1 attempt.*python -m ffjax.rewards.server --reward NAME --port {port}",
    ):
        RemoteReward(f"http://127.0.0.1:{port}", retries=0)


def test_unknown_reward_name_stops_the_server_with_a_message():
    with pytest.raises(RuntimeError, match="exit 2"):
        ServerProcess("--reward", "no_such_reward")


# --------------------------------------------------------------------------- fake servers


def test_slow_server_times_out_and_is_retried():
    with fake_server(slow(3.0, rewards_reply([0.5, 0.5]))) as (url, seen):
        remote = RemoteReward(url, timeout_s=0.3, retries=1, backoff_s=0.0)
        t0 = time.perf_counter()
        with pytest.raises(RemoteRewardError, match="failed 2 attempt.*timeout 0.3 s.*timed out"):
            remote(_samples())
        assert time.perf_counter() - t0 < 2.0 and len(seen) == 2


def test_5xx_is_retried_until_it_succeeds():
    replies = iter([(503, b'{"error": "warming up"}'), rewards_reply([0.25, None])])
    with fake_server(lambda request: next(replies)) as (url, seen):
        scores = RemoteReward(url, **FAST)(_samples())
    np.testing.assert_array_equal(scores, np.array([0.25, np.nan], np.float32))  # null = NaN
    assert len(seen) == 2 and seen[0]["protocol_version"] == PROTOCOL_VERSION
    assert seen[0]["prompt"] == ["prompt 0", "prompt 1"] and seen[0]["video"] is None
    assert seen[0]["metadata"] == [{}, {}] and len(seen[0]["image"]) == 2


BAD_REPLIES = {
    "not json": ((200, b"<html>oops</html>"), "not JSON"),
    "not an object": ((200, b"[0.5, 0.5]"), "JSON object"),
    "no rewards": ((200, b'{"scores": [1, 2]}'), r"no 'rewards' \(keys: \['scores'\]\)"),
    "wrong length": (rewards_reply([0.5]), "list of 2 numbers, got 1 values"),
    "non-numeric": (rewards_reply(["0.5", 1]), "numbers or null, got '0.5'"),
    "bool": (rewards_reply([True, 1]), "numbers or null, got True"),
    "server error": ((200, b'{"error": "model\\nexploded"}'), "server error: model exploded"),
    "version": ((200, b'{"rewards": [1, 2], "protocol_version": 99}'), "protocol_version 99"),
    "oversized": (rewards_reply([0.5, 0.5] + [0.0] * 500), "longer than max_response_bytes=1000"),
    "bad request": ((400, b'{"error": "no image"}'), "refused the request: HTTP 400: no image"),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_malformed_reply_fails_at_once_with_a_clear_error(case):
    reply, message = BAD_REPLIES[case]
    with fake_server(lambda request: reply) as (url, seen):
        remote = RemoteReward(url, max_response_bytes=1000, **FAST)
        with pytest.raises(RemoteRewardError, match=message) as e:
            remote(_samples())
    assert len(seen) == 1 and "\n" not in str(e.value)  # not retried


def test_health_with_another_protocol_version_is_refused():
    with fake_server(lambda r: rewards_reply([]), health=b'{"protocol_version": 2}') as (url, _):
        with pytest.raises(RemoteRewardError, match="/health: server speaks protocol_version 2"):
            RemoteReward(url)


def test_groupwise_remote_sends_the_whole_call_with_group_ids():
    with fake_server(lambda r: rewards_reply(range(len(r["prompt"])))) as (url, seen):
        remote = RemoteReward(url, kind="groupwise", batch_size=2, **FAST)
        samples = Samples(["p"] * 5, images=_images(5), group_ids=np.array([0, 0, 1, 1, 1]))
        np.testing.assert_array_equal(remote(samples), np.arange(5, dtype=np.float32))
    assert len(seen) == 1 and seen[0]["group_ids"] == [0, 0, 1, 1, 1]
