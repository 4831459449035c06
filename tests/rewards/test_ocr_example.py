"""examples/ocr_reward_server.py: the reader by hand, and served through the protocol."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from examples.ocr_reward_server import TextMatch, wanted_text
from ffjax.rewards.base import Samples
from ffjax.rewards.remote import RemoteReward
from tests.rewards.fixtures import ServerProcess

PROMPT = 'a shop sign that says "OPEN 24H"'


def _sign(text: str, scale: int = 2, size=(48, 160)) -> np.ndarray:
    """Dark `text` on a light board, drawn at 1 x with Pillow and enlarged `scale` x."""
    small = Image.new("RGB", (size[1] // scale, size[0] // scale), (235, 230, 220))
    if text:
        ImageDraw.Draw(small).text(
            (4, 5), text, fill=(30, 20, 20), font=ImageFont.load_default_imagefont()
        )
    return np.asarray(small.resize((size[1], size[0]), Image.NEAREST))


def _signs() -> Samples:
    texts = ["OPEN 24H", "OPEN", "CLOSED", ""]
    return Samples([PROMPT] * 4, images=np.stack([_sign(t) for t in texts]))


def test_text_match_reads_the_prompts_text():
    assert wanted_text(PROMPT) == "OPEN 24H" and wanted_text("plain") == "plain"
    scores = TextMatch()(_signs())
    # All 7 characters; "OPEN" is 4 of 7; "CLOSED" shares no glyph in place; blank: none.
    np.testing.assert_allclose(scores[[0, 1, 3]], [1.0, 4 / 7, 0.0])
    assert scores[2] < 0.3
    for scale in (1, 3):  # found at any integer scale up to max_scale
        one = Samples([PROMPT], images=_sign("OPEN 24H", scale, (66, 180))[None])
        assert TextMatch()(one)[0] == 1.0


@pytest.mark.parametrize("script", [None, "examples/ocr_reward_server.py"])
def test_served_text_match_scores_text_above_no_text(tmp_path, script):
    args = ["--args", '{"max_scale": 3}']
    if script is None:
        args = ["--reward", "examples.ocr_reward_server:TextMatch", *args]
    server = ServerProcess(*args, script=script, log=tmp_path / "server.txt")
    try:
        remote = RemoteReward(server.url, retries=0)
        np.testing.assert_array_equal(remote(_signs()), TextMatch(max_scale=3)(_signs()))
        assert remote(_signs())[0] == 1.0 and remote(_signs())[3] == 0.0
    finally:
        server.close()
