"""CLIP image-text models in JAX, for the CLIP-family rewards.

  model.py       CLIPVisionModel (the vision tower), CLIPModel (both towers, projections,
                 logit_scale); the text tower is `ffjax.models.text.clip.CLIPTextModel`.
  convert.py     strict key tables and `load_clip_model(path)` for transformers
                 `CLIPModel` folders.
  preprocess.py  `CLIPImageProcessor` (resize, centre crop, rescale, normalise) in JAX,
                 bit-exact PIL bicubic / bilinear resampling.
  aesthetic.py   the LAION aesthetic predictor head and its published weight format.

A folder of its own (not `models/text/`): CLIP is one model family with two towers,
and the rewards need the whole model, its image processor and heads on top of it.
"""

from ffjax.models.clip.convert import load_clip_model
from ffjax.models.clip.model import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

__all__ = ["CLIPConfig", "CLIPModel", "CLIPVisionConfig", "CLIPVisionModel", "load_clip_model"]
