"""CLIP-family rewards in JAX: `clip_score`, `pickscore`, `aesthetic`.

Each runs the image processor and the model in one `jax.jit` (one compile per image
size and batch size), on uint8 images of any size, from local folders named in the
reward's `args`; nothing is downloaded:

    rewards:
      pick:
        name: pickscore
        args: {path: /data/PickScore_v1, processor_path: /data/CLIP-ViT-H-14-laion2B-s32B-b79K}

Definitions (E_I, E_T the CLIP image / text embeddings, `get_image_features` /
`get_text_features`; cos their cosine similarity):

- `clip_score`: CLIPScore (Hessel et al. 2021, eq. 1): w * max(cos(E_I, E_T), 0),
  w = 2.5 (the paper's rescaling; torchmetrics' CLIPScore uses w = 100). Flow-Factory's
  `CLIP` reward is the raw cosine: `w=1, clamp=False`. Any CLIPModel folder
  (openai/clip-vit-large-patch14 is Flow-Factory's default; the paper used ViT-B/32).
- `pickscore`: PickScore (Kirstain et al. 2023) as Flow-Factory reports it:
  exp(logit_scale) * cos(E_I, E_T) / 26, about 0.8-0.9 for good images. `path`: a
  yuvalkirstain/PickScore_v1 copy (a CLIPModel); its processor and tokenizer are those
  of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (`processor_path`).
- `pickscore_rank` (groupwise): a sample's PickScore rank within its group / K (ties
  averaged, `ffjax.rewards.groupwise.group_rank`): 1 for the group's best image,
  1/K for its worst, whatever the prompt's typical PickScore. Same args as `pickscore`.
- `aesthetic`: the LAION aesthetic predictor (improved-aesthetic-predictor):
  MLP(E_I / ||E_I||) with CLIP ViT-L/14 (`path`: openai/clip-vit-large-patch14) and
  the published head file (`head_path`: sac+logos+ava1-l14-linearMSE.pth); see
  `ffjax.models.clip.aesthetic` for the file format. Prompts are not used.

Common args: `path` (required: a transformers CLIPModel folder), `processor_path`
(the folder holding the tokenizer and `preprocessor_config.json` / the
`processor_config.json` a CLIPProcessor saves; default `path`), `dtype` ("float32";
"bfloat16" on accelerators), `batch_size` (images per jit call; the last chunk is
padded so one compile serves every call; default: the whole batch). Videos are
scored frame by frame and averaged.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ffjax import registry
from ffjax.rewards.base import RewardError, Samples, call_reward
from ffjax.rewards.groupwise import group_ids_of, group_rank

PICKSCORE_DIVISOR = 26.0  # Flow-Factory's "norm to 0-1" of PickScore
CLIPSCORE_W = 2.5  # Hessel et al. 2021


class RewardConfigError(RewardError, ValueError):
    """A CLIP-family reward's args are missing or name something unusable."""


def _folder(reward: str, arg: str, value: Any, what: str) -> str:
    """`value` as a path, or RewardConfigError naming the reward and `args.<arg>`."""
    if value is None or value == "":
        raise RewardConfigError(
            f"reward {reward!r}: args.{arg} is required: {what}; ffjax never downloads weights"
        )
    value = os.fspath(value)
    if not os.path.exists(value):
        raise RewardConfigError(f"reward {reward!r}: args.{arg}={value!r} does not exist ({what})")
    return value


# --------------------------------------------------------------------------- definitions


def _cosine(image_embeds, text_embeds):
    import jax.numpy as jnp

    from ffjax.models.clip.model import l2_normalize

    return jnp.sum(l2_normalize(image_embeds) * l2_normalize(text_embeds), axis=-1)


def clip_score_value(image_embeds, text_embeds, w: float = CLIPSCORE_W, clamp: bool = True):
    """CLIP-S = w * max(cos(E_I, E_T), 0): [B, P] embeddings (unnormalised) -> float32[B]."""
    import jax.numpy as jnp

    cos = _cosine(image_embeds, text_embeds)
    return w * (jnp.maximum(cos, 0.0) if clamp else cos)


def pickscore_value(image_embeds, text_embeds, logit_scale):
    """exp(logit_scale) * cos(E_I, E_T) / 26: [B, P] embeddings, [] log-scale -> float32[B]."""
    import jax.numpy as jnp

    scale = jnp.exp(jnp.asarray(logit_scale, jnp.float32))
    return scale * _cosine(image_embeds, text_embeds) / PICKSCORE_DIVISOR


# --------------------------------------------------------------------------- rewards


class _CLIPReward:
    """Loading, tokenising, chunking and the jit shared by the CLIP-family rewards."""

    kind = "pointwise"
    name = ""
    video = "frames"  # a video scores the mean of its frames (ffjax.rewards.base)
    uses_text = True
    path_help = "a local transformers CLIPModel folder (config.json + model.safetensors)"

    def __init__(
        self,
        path: str | None = None,
        processor_path: str | None = None,
        dtype: str = "float32",
        batch_size: int | None = None,
    ):
        import jax

        from ffjax.models import weights as W
        from ffjax.models.clip import convert, preprocess
        from ffjax.models.text.tokenize import load_tokenizer

        path = _folder(self.name, "path", path, self.path_help)
        proc_help = "the folder a CLIPProcessor was saved to (tokenizer + image processor config)"
        proc_dir = path
        if processor_path is not None:
            proc_dir = _folder(self.name, "processor_path", processor_path, proc_help)
        if batch_size is not None and int(batch_size) < 1:
            raise RewardConfigError(f"reward {self.name!r}: args.batch_size must be >= 1")
        self.batch_size = None if batch_size is None else int(batch_size)
        try:
            self.processor = preprocess.load_image_processor(proc_dir)
            self.tokenizer = load_tokenizer(proc_dir) if self.uses_text else None
            self.module, params = convert.load_clip_model(path, dtype)
        except (FileNotFoundError, W.WeightsError) as e:
            hint = "" if processor_path is not None else " (or set args.processor_path)"
            raise RewardConfigError(f"reward {self.name!r}: {e}{hint}") from e
        self.params = self._prepare(params)
        self._jit = jax.jit(self._scores)
        self.mesh = None  # set by `place`

    def place(self, mesh) -> None:
        """Runs this reward on `mesh` beside the generator: parameters replicated on its
        devices, each batch's rows split over its ("data", "fsdp") axes (a batch is
        padded to a multiple of their size). Scores are unchanged."""
        import jax

        from ffjax.parallel.sharding import replicated

        self.mesh = mesh
        self.params = jax.device_put(self.params, replicated(mesh))

    # Subclasses: which params the jit needs, and the score from preprocessed pixels.
    def _prepare(self, params: dict[str, Any]) -> Any:
        return params

    def _value(self, params: Any, pixels, input_ids, attention_mask):
        raise NotImplementedError

    def _scores(self, params: Any, images, input_ids, attention_mask):
        from ffjax.models.clip.preprocess import preprocess

        pixels = preprocess(images, self.processor)
        return self._value(params, pixels, input_ids, attention_mask)

    def _image_features(self, params, pixels):
        v = {"params": params}
        return self.module.apply(v, pixels, method="get_image_features")

    def _text_features(self, params, input_ids, attention_mask):
        v = {"params": params}
        return self.module.apply(v, input_ids, attention_mask, method="get_text_features")

    def __call__(self, samples: Samples) -> np.ndarray:
        """Scores a batch: uint8 images [B, H, W, 3] (or videos [B, T, H, W, 3]) -> float32[B]."""
        if samples.videos is not None:  # each frame against its clip's prompt, averaged
            return call_reward(self, samples).astype(np.float32)
        frames, prompts = samples.images, samples.prompts
        ids = mask = None
        if self.uses_text:
            from ffjax.models.text.tokenize import tokenize

            length = self.module.config.text.max_position_embeddings
            tokens = tokenize(self.tokenizer, prompts, length)
            ids, mask = tokens.input_ids, tokens.attention_mask
        return self._run(np.asarray(frames), ids, mask)

    def _run(self, frames: np.ndarray, ids, mask) -> np.ndarray:
        import jax

        n = frames.shape[0]
        size = self.batch_size or n
        place = lambda a: a
        if self.mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec

            from ffjax.parallel.sharding import BATCH_AXES

            ways = int(np.prod([self.mesh.shape[a] for a in BATCH_AXES]))
            size = -(-size // ways) * ways
            rows_sharding = NamedSharding(self.mesh, PartitionSpec(BATCH_AXES))
            place = lambda a: jax.device_put(a, rows_sharding)
        out = []
        for start in range(0, n, size):
            rows = np.arange(start, start + size).clip(max=n - 1)  # pad with the last row
            chunk = [None if a is None else place(a[rows]) for a in (frames, ids, mask)]
            out.append(np.asarray(self._jit(self.params, *chunk))[: n - start])
        return np.concatenate(out).astype(np.float32)


@registry.REWARDS.register("clip_score")
class CLIPScore(_CLIPReward):
    """CLIPScore, w * max(cos(E_I, E_T), 0) (Hessel et al. 2021); see the module docstring.

    Args (beyond the common ones): w: the rescaling (2.5); clamp: apply max(., 0).
    """

    name = "clip_score"

    def __init__(
        self,
        path: str | None = None,
        processor_path: str | None = None,
        dtype: str = "float32",
        batch_size: int | None = None,
        w: float = CLIPSCORE_W,
        clamp: bool = True,
    ):
        self.w, self.clamp = float(w), bool(clamp)
        super().__init__(path, processor_path, dtype, batch_size)

    def _value(self, params, pixels, input_ids, attention_mask):
        image = self._image_features(params, pixels)
        text = self._text_features(params, input_ids, attention_mask)
        return clip_score_value(image, text, self.w, self.clamp)


@registry.REWARDS.register("pickscore")
class PickScore(_CLIPReward):
    """PickScore as Flow-Factory reports it: exp(logit_scale) * cos(E_I, E_T) / 26."""

    name = "pickscore"
    path_help = "a local PickScore_v1 folder (a transformers CLIPModel)"

    def _value(self, params, pixels, input_ids, attention_mask):
        image = self._image_features(params, pixels)
        text = self._text_features(params, input_ids, attention_mask)
        return pickscore_value(image, text, params["logit_scale"])


@registry.REWARDS.register("pickscore_rank")
class PickScoreRank:
    """PickScore ranked within each group, divided by the group size (groupwise).

    Samples of one prompt share a group (`Samples.group_ids`, or the prompt text when
    they are None); a failed sample (NaN PickScore) stays NaN and is not counted in K.
    """

    name = "pickscore_rank"
    kind = "groupwise"
    video = "clip"  # ranks clips (their PickScore is the mean over frames)

    def __init__(self, **args: Any):
        self.pickscore = PickScore(**args)

    def place(self, mesh) -> None:
        """Runs the PickScore model on `mesh` (see `_CLIPReward.place`)."""
        self.pickscore.place(mesh)

    def __call__(self, samples: Samples) -> np.ndarray:
        scores = self.pickscore(samples)
        return group_rank(scores, group_ids_of(samples)).astype(np.float32)


@registry.REWARDS.register("aesthetic")
class Aesthetic(_CLIPReward):
    """LAION aesthetic score: the published MLP head on the L2-normalised CLIP image embedding.

    Args (beyond the common ones): head_path: `sac+logos+ava1-l14-linearMSE.pth` (or a
    .safetensors with its keys). `path` is the CLIP ViT-L/14 CLIPModel; only its vision
    tower is kept.
    """

    name = "aesthetic"
    uses_text = False
    path_help = "a local CLIP ViT-L/14 folder (openai/clip-vit-large-patch14, a CLIPModel)"

    def __init__(
        self,
        path: str | None = None,
        head_path: str | None = None,
        processor_path: str | None = None,
        dtype: str = "float32",
        batch_size: int | None = None,
    ):
        self._head_path = head_path  # checked in _prepare, after `path`
        super().__init__(path, processor_path, dtype, batch_size)

    def _prepare(self, params):
        from ffjax.models import weights as W
        from ffjax.models.clip.aesthetic import load_aesthetic_head

        what = "the LAION aesthetic head file (sac+logos+ava1-l14-linearMSE.pth or .safetensors)"
        head_path = _folder(self.name, "head_path", self._head_path, what)
        width = self.module.config.projection_dim
        try:
            head = load_aesthetic_head(head_path, input_dim=width)
        except (FileNotFoundError, W.WeightsError) as e:
            raise RewardConfigError(f"reward {self.name!r}: args.head_path: {e}") from e
        # The text tower is never used: don't keep it on the device.
        return {"clip": {"vision_model": params["vision_model"]}, "head": head}

    def _image_features(self, params, pixels):
        from ffjax.models.clip.model import CLIPVisionModel

        m = self.module
        tower = CLIPVisionModel(m.config.vision, dtype=m.dtype, param_dtype=m.param_dtype)
        return tower.apply({"params": params["vision_model"]}, pixels)["image_embeds"]

    def _value(self, params, pixels, input_ids, attention_mask):
        import jax.numpy as jnp

        from ffjax.models.clip.aesthetic import AestheticHead

        e = self._image_features(params["clip"], pixels).astype(jnp.float32)
        norm = jnp.linalg.norm(e, axis=-1, keepdims=True)
        # The published `normalized` leaves a zero vector as is (norm taken as 1).
        e = e / jnp.where(norm == 0, 1.0, norm)
        return AestheticHead().apply({"params": params["head"]}, e)
