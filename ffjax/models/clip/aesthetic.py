"""The LAION aesthetic predictor head (improved-aesthetic-predictor, C. Schuhmann 2022).

The published head `sac+logos+ava1-l14-linearMSE.pth` is `torch.save(model.state_dict())`
of a module whose `layers` is

    nn.Sequential(Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
                  Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1))

so its ten tensors are `layers.{0,2,4,6,7}.{weight,bias}` (torch layout (out, in);
indices 1, 3, 5 are the parameterless dropouts). The ReLUs between the layers are
commented out in the published code, so the head is affine: five Linear layers with
nothing in between, and dropout is the identity at inference. Its input is the CLIP
ViT-L/14 image embedding (`get_image_features`, 768-d) divided by its L2 norm; its
output is a score on the AVA 1-10 scale.

The file is read as published (`.pth` through `torch.load(weights_only=True)`) or as
a `.safetensors` holding the same ten keys; the key table is strict.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models import layers
from ffjax.models import weights as W
from ffjax.models.weights import dense

# Sequential index of each Linear, and its published width (the last is the score).
LINEAR_INDICES = (0, 2, 4, 6, 7)
HIDDEN = (1024, 128, 64, 16, 1)


class AestheticHead(nn.Module):
    """x [B, D] -> score [B]: the five Linear layers of the published head, no activations."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: float[B, D], the L2-normalised CLIP image embedding. Returns float32[B]."""
        for i, width in zip(LINEAR_INDICES, HIDDEN, strict=True):
            x = layers.Dense(width, (None, None), name=f"layers_{i}", dtype=self.dtype)(x)
        return x[:, 0].astype(jnp.float32)


def head_rules() -> list[W.Rule]:
    """The head's key table: `layers.{i}` (torch Linear) <-> our `layers_{i}` (Dense)."""
    return [r for i in LINEAR_INDICES for r in dense(f"layers_{i}", f"layers.{i}")]


def _source(path: str) -> W.TensorSource:
    if path.endswith(".safetensors"):
        return W.SafetensorsFile(path)
    if path.endswith((".pth", ".pt", ".bin")):
        try:
            import torch
        except ImportError as e:  # torch is only a dev dependency
            raise W.CheckpointFormatError(
                f"{path}: reading a torch file needs torch; or save its state dict as"
                " .safetensors (same keys)"
            ) from e
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise W.CheckpointFormatError(
                f"{path}: expected a state dict (torch.save(model.state_dict())), got"
                f" {type(state).__name__}"
            )
        return W.ArraySource({k: v.float().numpy() for k, v in state.items()})
    raise W.CheckpointFormatError(
        f"{path}: expected a .pth/.pt/.bin state dict or a .safetensors file"
    )


def load_aesthetic_head(path: str | os.PathLike, input_dim: int | None = None) -> dict[str, Any]:
    """Params of `AestheticHead` from the published head file (float32).

    Args:
      path: `sac+logos+ava1-l14-linearMSE.pth` (or a .safetensors with the same keys).
      input_dim: the embedding width it must take (the CLIP projection_dim; 768 for
        ViT-L/14); None takes it from `layers.0.weight`.

    Returns:
      {"layers_0": {"kernel": [D, 1024], "bias": [1024]}, ..., "layers_7": {...}}.

    Raises:
      FileNotFoundError; CheckpointFormatError for an unreadable file; ConversionError
      naming each missing, unexpected or mis-shaped tensor (widths other than the
      published 1024-128-64-16-1 included).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such aesthetic head file")
    source = _source(path)
    if input_dim is None:
        keys = set(source.keys())
        input_dim = source.shape("layers.0.weight")[1] if "layers.0.weight" in keys else 768
    x = jax.ShapeDtypeStruct((1, input_dim), jnp.float32)
    expected = W.flat_shapes(jax.eval_shape(AestheticHead().init, jax.random.key(0), x)["params"])
    place = lambda _, a: jnp.asarray(a)
    what = f"aesthetic head {path}"
    return W.load_params(head_rules(), source, expected, dtype=np.float32, place=place, what=what)


def export_aesthetic_head(params: Any) -> dict[str, np.ndarray]:
    """Our head params -> the published state-dict keys (`layers.{i}.weight/bias`)."""
    return W.export_params(head_rules(), params)
