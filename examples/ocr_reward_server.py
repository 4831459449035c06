"""A user's reward server: an OCR-style "does the image show the prompt's text" reward.

Text-rendering RL (Flow-GRPO's OCR task) rewards an image by how well an OCR model
reads the text the prompt asks for, e.g. `a sign that says "OPEN"`. Real OCR models
(PaddleOCR, docTR) are downloads; this example stands in a download-free reader built
from PyPI packages only (numpy, Pillow): it renders the wanted text with Pillow's
built-in bitmap font and finds the best match of that template anywhere in the image,
at integer scales 1..max_scale. Swap `TextMatch.__call__` for a real OCR model and
keep the rest: the server, the protocol and the training command do not change.

Serve it (from the repository root), then train against it:

    python -m ffjax.rewards.server --reward examples.ocr_reward_server:TextMatch \\
        --port 8000 --args '{"max_scale": 4}'
    # or: python examples/ocr_reward_server.py --port 8000
    python -m ffjax.train --config.rewards.ocr.name=remote \\
        --config.rewards.ocr.args.url=http://127.0.0.1:8000

Score (float32, in [0, 1]), a character accuracy as OCR rewards use: the rendered
text is placed where its ink best overlaps the image's ink (luma < 128: dark text on
a light background; best intersection-over-union over placements and scales), and the
score is the fraction of its characters whose glyph matches the image there. 1 = the
text is shown (in that font, at an integer scale); 0 = none of it (a blank image).
"""

from __future__ import annotations

import re
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ffjax.rewards.base import Samples

_FONT = ImageFont.load_default_imagefont()  # Pillow's built-in bitmap font: no download
_LUMA = np.array([0.299, 0.587, 0.114])


def wanted_text(prompt: str) -> str:
    """The text a prompt asks to show: its first "double-quoted" part, else all of it."""
    quoted = re.search(r'"([^"]+)"', prompt)
    return quoted.group(1) if quoted else prompt


def render(text: str, scale: int = 1) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(bool[h, w] ink of `text` in the bitmap font, cropped and enlarged `scale` x,
    the [x0, x1) columns of each non-space character in it)."""
    left, top, right, bottom = _FONT.getbbox(text)
    canvas = Image.new("L", (right + 2, bottom + 2), 255)
    ImageDraw.Draw(canvas).text((1, 1), text, fill=0, font=_FONT)
    ink = np.asarray(canvas) < 128
    rows, cols = np.nonzero(ink.any(1))[0], np.nonzero(ink.any(0))[0]
    if not len(rows):
        return np.zeros((0, 0), bool), []
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    x = [1 + int(_FONT.getlength(text[:i])) - cols[0] for i in range(len(text) + 1)]
    cells = [
        (max(x[i], 0) * scale, x[i + 1] * scale) for i, c in enumerate(text) if not c.isspace()
    ]
    return np.kron(ink, np.ones((scale, scale), bool)), cells


def best_placement(ink: np.ndarray, template: np.ndarray) -> tuple[float, int, int]:
    """(IoU, y, x): the placement of template T in image ink I with the largest
    |T and I| / |T or I|; IoU 0 when T does not fit.

    |T and I| at every placement is one FFT cross-correlation; |I| per window comes
    from an integral image; |T or I| = |T| + |I| - |T and I|.
    """
    (H, W), (h, w) = ink.shape, template.shape
    if h > H or w > W or not template.any():
        return 0.0, 0, 0
    shape = (H + h - 1, W + w - 1)  # full size: no wrap-around
    spectrum = np.fft.rfft2(ink, shape) * np.fft.rfft2(template[::-1, ::-1], shape)
    both = np.rint(np.fft.irfft2(spectrum, shape)[h - 1 : H, w - 1 : W])
    s = np.pad(ink, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    window = s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]
    iou = both / (template.sum() + window - both)
    y, x = np.unravel_index(np.argmax(iou), iou.shape)
    return float(iou[y, x]), int(y), int(x)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


class TextMatch:
    """Pointwise reward: how well each image shows its prompt's text (see above).

    Args:
      max_scale: largest integer enlargement of the 11-pixel-high font tried.
      char_iou: a character counts as read when its cell's ink overlaps the rendered
        glyph's with at least this intersection-over-union.
    """

    name = "text_match"
    kind = "pointwise"

    def __init__(self, max_scale: int = 4, char_iou: float = 0.8):
        self.max_scale, self.char_iou = int(max_scale), float(char_iou)

    def __call__(self, samples: Samples) -> np.ndarray:
        frames = samples.images if samples.images is not None else samples.videos[:, 0]
        out = [
            self.score(image, wanted_text(p))
            for image, p in zip(frames, samples.prompts, strict=True)
        ]
        return np.asarray(out, np.float32)

    def score(self, image: np.ndarray, text: str) -> float:
        """Fraction of `text`'s characters found where the whole text matches best."""
        ink = image.astype(np.float64) @ _LUMA < 128
        renders = [render(text, s) for s in range(1, self.max_scale + 1)]
        (iou, y, x), (template, cells) = max(
            ((best_placement(ink, t), (t, c)) for t, c in renders), key=lambda r: r[0][0]
        )
        if iou == 0 or not cells:
            return 0.0
        window = ink[y : y + template.shape[0], x : x + template.shape[1]]
        hits = [_iou(template[:, a:b], window[:, a:b]) >= self.char_iou for a, b in cells]
        return float(np.mean(hits))


if __name__ == "__main__":  # python examples/ocr_reward_server.py [--port N] [--args JSON]
    from ffjax import registry
    from ffjax.cli import reward_server

    registry.REWARDS.register("text_match", TextMatch)
    reward_server.main(["--reward", "text_match", *sys.argv[1:]])
