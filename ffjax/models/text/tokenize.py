"""Prompt tokenization exactly as the Diffusers pipelines do it, without torch.

The tokenizers are the ones saved in the pipeline folder (`tokenizer/`,
`tokenizer_2/`), loaded with transformers' `AutoTokenizer` (the same classes the
pipelines use, so special tokens, padding side and model_max_length agree) and run
with `return_tensors="np"`.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Token ids and mask, int32[B, L] each (mask 1 = token, 0 = padding)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


def load_tokenizer(folder: str | os.PathLike, subfolder: str | None = None) -> Any:
    """The transformers tokenizer saved in `folder/subfolder` (e.g. a pipeline's `tokenizer_2`).

    Raises:
      FileNotFoundError naming the missing folder or its missing tokenizer files.
    """
    path = os.path.join(os.fspath(folder), subfolder) if subfolder else os.fspath(folder)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{folder}: no tokenizer folder {subfolder or ''!r} (expected {path} holding the tokenizer the"
            " pipeline saved, e.g. tokenizer_config.json + tokenizer.json)"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        raise FileNotFoundError(
            f"{path}: not a loadable tokenizer folder ({type(e).__name__}: {e})"
        ) from e


def tokenize(
    tokenizer: Any,
    prompts: Sequence[str],
    max_length: int,
    *,
    warn_truncation: str | None = None,
    add_special_tokens: bool = True,
) -> Tokens:
    """Pads to `max_length` and truncates, as `padding="max_length", truncation=True`.

    Args:
      tokenizer: from `load_tokenizer`.
      prompts: B strings.
      max_length: L, the padded length.
      warn_truncation: if set, a prompt longer than L logs a warning (as the FLUX
        pipeline's `logger.warning`) with this text and the removed part.
      add_special_tokens: as the tokenizer call's argument.

    Returns:
      Tokens with int32[B, L] input_ids and attention_mask.
    """
    prompts = list(prompts)
    enc = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=add_special_tokens,
        return_attention_mask=True,
        return_tensors="np",
    )
    ids = np.asarray(enc["input_ids"], np.int32)
    if warn_truncation is not None:
        # The pipelines' test: tokenize without truncation ("longest") and compare.
        full = np.asarray(tokenizer(prompts, padding="longest", return_tensors="np")["input_ids"])
        if full.shape[-1] >= ids.shape[-1] and not np.array_equal(full, ids):
            removed = tokenizer.batch_decode(full[:, max_length - 1 : -1])
            logging.warning(
                "%s truncated to %d tokens; removed: %s", warn_truncation, max_length, removed
            )
    return Tokens(ids, np.asarray(enc["attention_mask"], np.int32))


def prompt_clean(text: str) -> str:
    """WAN's `prompt_clean`: ftfy.fix_text when installed, html-unescape twice, collapse whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # Diffusers skips ftfy when it is not installed, too
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()
