"""The `wan2-t2v` model adapter: what samplers and algorithms see of WAN 2.1 / 2.2.

Latent layout: the VAE gives (B, f, h, w, z_dim) latents, f = (num_frames - 1) / 4 + 1
and h = H / 8 (Wan 2.1) or H / 16 (Wan 2.2 TI2V-5B); the sampler carries them as they
are, channels last, in the transformer's space (z - latents_mean) / latents_std per
channel, which is where `WanPipeline` draws its noise. `decode` undoes that before the
VAE and returns uint8 videos (B, num_frames, H, W, 3).

Time: samplers use sigma in [0, 1]; WAN's transformer takes the scheduler's timestep
sigma * 1000, which `velocity` passes. The rollout grid (`sigmas`) has the pipeline's
fixed shift (`flow_shift` of its UniPC scheduler, `shift` of a
FlowMatchEulerDiscreteScheduler, or `config.model.flow_shift`) and is one of
`ffjax.flow.schedule.SIGMA_GRIDS` (`config.sampling.sigma_grid`): "unipc_flow", the
grid Flow-Factory's WAN adapter rolls out on (its UniPC scheduler's integer timesteps /
1000: 0.999, 0.964, 0.923, ... for 10 steps at shift 3), or "flow_match_euler", the
FlowMatchEulerDiscreteScheduler grid (1, 0.960, 0.913, ...); "pipeline" (the default)
takes the one of the folder's scheduler class, as Flow-Factory picks its scheduler. RL
rollouts step the grid with ffjax's ODE / SDE steps; `unipc_sigmas` gives what
WanPipeline's own UniPC multistep solver uses (`ffjax.flow.unipc`), for evaluation.

Guidance: classifier-free, v = v_neg + s (v_pos - v_neg), on when s > 1, as
`WanPipeline` does; the negative prompt is `config.model.negative_prompt` (WAN's
pipeline uses "" when none is given). It is one prompt for every row: the conditioning
holds its UMT5 states broadcast to the batch (every leaf batch-first, so a trainer
indexes and shards it like any batch), but the transformer only reads row 0: the text
projection and cross-attention K/V of the negative prompt are computed once (batch 1)
and broadcast at the attention, not once per row.

Wan 2.2 A14B: two experts, `transformer` for timesteps >= boundary_ratio * 1000 (high
noise) and `transformer_2` below it, with guidance scales `guidance_scale` and
`guidance_scale_2`. Their params travel together as the denoiser tree
{"transformer": ..., "transformer_2": ...} (LoRA targets match both by default).

Cross-attention keys / values of the prompt depend on the prompt and the weights only,
so `prepare_cond` computes them once per rollout (`ffjax.flow.rollout`'s `prepare_fn`)
instead of at every step; training forwards compute them in the forward.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ffjax.flow.schedule import (
    SIGMA_GRIDS,
    fixed_shift_sigmas,
    unipc_flow_rollout_sigmas,
    unipc_flow_sigmas,
)
from ffjax.models import weights as weights_lib
from ffjax.models.adapter import AdapterBase
from ffjax.models.wan.config import WanTransformerConfig, WanVAEConfig, read_config
from ffjax.models.wan.convert import identify, load_transformer, load_vae
from ffjax.models.wan.transformer import WanTransformer
from ffjax.models.wan.transformer import init_shapes as transformer_init_shapes
from ffjax.models.wan.vae import WanVAE, from_transformer_space
from ffjax.models.wan.vae import init_shapes as vae_init_shapes

# Default LoRA targets (regexes on Dense module paths): Flow-Factory's WAN
# `default_target_modules` (attn1 / attn2 to_q, to_k, to_v, to_out.0, ffn.net.0.proj,
# ffn.net.2) in our module names, for one expert or either of the A14B pair.
WAN_TARGETS: tuple[str, ...] = (
    r"^(transformer(_2)?/)?blocks/attn[12]/(to_[qkv]|to_out)$",
    r"^(transformer(_2)?/)?blocks/ffn/(proj_in|proj_out)$",
)
EXPERTS = ("transformer", "transformer_2")  # high-noise, low-noise (Wan 2.2 A14B)
WAN_SHIFT = 3.0  # WanPipeline's documented flow_shift for 480p (5.0 for 720p)
_PIPELINES = ("WanPipeline",)


@struct.dataclass
class WanCond:
    """Conditioning of one batch.

    Attributes:
      prompt_embeds: float[B, S, text_dim] UMT5 states, zero beyond each prompt.
      negative_prompt_embeds: the negative prompt's states broadcast to every row (the
        same in each: `make_cond` takes one row), or None without CFG; only row 0 is
        read.
      guidance_scale: float32[B] CFG scale s (None without CFG).
      guidance_scale_2: float32[B] the low-noise expert's scale (A14B; else None).
      kv, negative_kv: cross-attention keys / values per expert ({expert: pytree}),
        filled by `prepare_cond` inside a rollout; None everywhere else. negative_kv
        has batch 1 (its image entries, wan2-i2v, are kv's).
      expert: static (not a leaf): the index in EXPERTS of the expert every row uses,
        set by `with_expert` for a training micro-batch of one expert's rows (only
        that expert is traced, so its gradient keeps one expert's activations); None:
        chosen per row from sigma.

    Every leaf but `kv` / `negative_kv` has the batch axis first, so a trainer can
    index, shuffle and shard a WanCond like any batch.
    """

    prompt_embeds: jax.Array
    negative_prompt_embeds: jax.Array | None = None
    guidance_scale: jax.Array | None = None
    guidance_scale_2: jax.Array | None = None
    kv: Any = None
    negative_kv: Any = None
    expert: int | None = struct.field(pytree_node=False, default=None)

    @property
    def cfg(self) -> bool:
        return self.negative_prompt_embeds is not None

    @property
    def negative(self) -> jax.Array:
        """float[1, S, text_dim]: the negative prompt's states, once (row 0; all equal)."""
        return self.negative_prompt_embeds[:1]


def guide(v_pos: jax.Array, v_neg: jax.Array, scale: jax.Array) -> jax.Array:
    """WanPipeline's guidance v_neg + s (v_pos - v_neg); `scale` float[B] broadcasts per row."""
    s = jnp.asarray(scale, v_pos.dtype).reshape((-1,) + (1,) * (v_pos.ndim - 1))
    return v_neg + s * (v_pos - v_neg)


def _pipeline_shift(path: str) -> float:
    """The fixed schedule shift of a pipeline folder's scheduler (UniPC `flow_shift`,
    FlowMatchEuler `shift`), or WAN_SHIFT without a scheduler folder."""
    f = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.exists(f):
        return WAN_SHIFT
    sc = read_config(f)
    if sc.get("use_dynamic_shifting"):
        raise ValueError(f"{f}: dynamic shifting is not WAN's schedule (fixed shift expected)")
    return float(sc.get("flow_shift", sc.get("shift", WAN_SHIFT)))


# Scheduler classes of WAN pipeline folders -> the rollout grid Flow-Factory walks with
# them (its scheduler registry maps the pipeline's scheduler class to its SDE scheduler).
_SCHEDULER_GRIDS = {
    "UniPCMultistepScheduler": "unipc_flow",
    "FlowMatchEulerDiscreteScheduler": "flow_match_euler",
}


def resolve_sigma_grid(grid: str, path: str) -> str:
    """`grid` ("pipeline" | "flow_match_euler" | "unipc_flow") with "pipeline" replaced by
    the grid of the folder's scheduler class (no scheduler folder: "unipc_flow", the
    UniPCMultistepScheduler released WAN pipelines ship). ValueError for anything else."""
    if grid not in SIGMA_GRIDS:
        raise ValueError(f"sigma_grid {grid!r}; allowed: {', '.join(SIGMA_GRIDS)}")
    if grid != "pipeline":
        return grid
    f = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.exists(f):
        return "unipc_flow"
    sc = read_config(f)
    name = sc.get("_class_name")
    if name not in _SCHEDULER_GRIDS:
        raise ValueError(
            f"{f}: scheduler {name!r} has no ffjax sigma grid; set config.sampling.sigma_grid"
            f" to one of {', '.join(g for g in SIGMA_GRIDS if g != 'pipeline')}"
        )
    if name == "UniPCMultistepScheduler" and not sc.get("use_flow_sigmas"):
        raise ValueError(
            f"{f}: a UniPCMultistepScheduler without use_flow_sigmas is not a flow grid"
        )
    return _SCHEDULER_GRIDS[name]


def _check_folder(path: str, pipelines: tuple[str, ...]) -> dict[str, Any]:
    """The folder's model_index.json; clear errors for a non-folder, another family or
    a lone component folder."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model path {path!r} is not a folder (a WAN pipeline folder)")
    kind = identify(path)  # CheckpointFormatError naming the class found
    if kind != "pipeline":
        raise ValueError(
            f"{path}: a WAN {kind} folder; the adapter needs the whole pipeline folder"
            " (model_index.json, transformer/, vae/, text_encoder/, tokenizer/)"
        )
    index = read_config(os.path.join(path, "model_index.json"))
    if index.get("_class_name") not in pipelines:
        raise ValueError(
            f"{path}: model_index.json _class_name is {index.get('_class_name')!r}; this"
            f" adapter loads {list(pipelines)}"
        )
    return index


def check_num_frames(num_frames: int, temporal: int = 4) -> int:
    """Latent frames of a `num_frames` video; ValueError unless num_frames = 4k + 1."""
    if (
        not isinstance(num_frames, (int, np.integer))
        or num_frames < 1
        or (num_frames - 1) % temporal
    ):
        raise ValueError(
            f"num_frames={num_frames} is not {temporal}k + 1 (1, 5, 9, ..., 81): the WAN"
            f" VAE compresses time {temporal}x after the first frame"
        )
    return (int(num_frames) - 1) // temporal + 1


class WanT2VAdapter(AdapterBase):
    """WAN text-to-video (Wan 2.1 T2V 1.3B / 14B, Wan 2.2 TI2V-5B, Wan 2.2 A14B), behind
    `ffjax.models.adapter.ModelAdapter` (registered as `wan2-t2v`).

    Args:
      transformer: the WanTransformer module (the high-noise expert for A14B).
      vae: the WanVAE module (None if only velocities are needed).
      vae_config: its config.
      num_frames: frames of every video (4k + 1).
      guidance_scale: CFG scale s (<= 1 disables guidance).
      guidance_scale_2: the low-noise expert's scale (A14B; None: guidance_scale).
      negative_prompt: prompt of the unconditional pass.
      shift: the schedule's fixed shift.
      sigma_grid: the rollout grid, "flow_match_euler" or "unipc_flow" (module
        docstring; `resolve_sigma_grid` turns a config's "pipeline" into one of them).
      boundary_ratio: A14B switch point (None: one expert); `transformer_2` is then
        the low-noise expert's module.
      expand_timesteps: Wan 2.2 TI2V-5B passes one timestep per latent token.
      text: TextEncoder (UMT5 + tokenizer), as `load` builds it; None: prompts cannot
        be encoded (`make_cond` from given embeddings still works).
      embed_cache: optional ffjax.data.embed_cache.EmbedCache of prompt embeddings.
      max_sequence_length: prompt tokens (WanPipeline.__call__'s default 512).
    """

    supports_cfg = True  # CFG in `velocity`, so config.algorithm.cfg_in_train applies
    denoiser = "transformer"  # the weights RL trains (key in the `load` weights dict)

    def __init__(
        self,
        transformer: WanTransformer,
        vae: WanVAE | None = None,
        vae_config: WanVAEConfig | None = None,
        *,
        num_frames: int = 81,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        negative_prompt: str = "",
        shift: float = WAN_SHIFT,
        sigma_grid: str = "flow_match_euler",
        boundary_ratio: float | None = None,
        transformer_2: WanTransformer | None = None,
        expand_timesteps: bool = False,
        text: Any = None,
        embed_cache: Any = None,
        max_sequence_length: int = 512,
    ):
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.config = transformer.config
        self.vae = vae
        self.vae_config = vae_config or (vae.config if vae is not None else WanVAEConfig())
        self.latent_frames = check_num_frames(num_frames, self.vae_config.temporal_factor)
        self.num_frames = int(num_frames)
        self.guidance_scale = float(guidance_scale)
        self.guidance_scale_2 = float(
            guidance_scale if guidance_scale_2 is None else guidance_scale_2
        )
        self.negative_prompt = negative_prompt
        self.shift = float(shift)
        if sigma_grid not in SIGMA_GRIDS or sigma_grid == "pipeline":
            raise ValueError(
                f"sigma_grid {sigma_grid!r}; allowed: 'flow_match_euler', 'unipc_flow'"
                " (resolve 'pipeline' with resolve_sigma_grid)"
            )
        self.sigma_grid = sigma_grid
        if (boundary_ratio is None) != (transformer_2 is None):
            raise ValueError("boundary_ratio and transformer_2 go together (Wan 2.2 A14B)")
        if boundary_ratio is not None and not 0 < boundary_ratio < 1:
            raise ValueError(f"boundary_ratio must be in (0, 1), got {boundary_ratio}")
        if guidance_scale_2 is not None and transformer_2 is None:
            # As WanPipeline.check_inputs: only a two-expert pipeline has a second stage.
            raise ValueError(
                f"guidance_scale_2={guidance_scale_2} (config.model.guidance_scale_2) is only"
                " for two-expert pipelines (Wan 2.2 A14B, boundary_ratio set); set it to 0"
            )
        self.boundary_ratio = boundary_ratio
        self.expand_timesteps = bool(expand_timesteps)
        self.text = text
        self.embed_cache = embed_cache
        self.max_sequence_length = max_sequence_length

    @property
    def two_experts(self) -> bool:
        return self.transformer_2 is not None

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Default LoRA target regexes on Dense module paths (`WAN_TARGETS`)."""
        return WAN_TARGETS

    @property
    def do_cfg(self) -> bool:
        """Whether `encode_prompts` adds the negative prompt: guidance_scale > 1, as
        WanPipeline's `do_classifier_free_guidance` (which ignores guidance_scale_2)."""
        return self.guidance_scale > 1

    # ----------------------------------------------------------------- loading

    @classmethod
    def _runtime(cls, config: Any) -> dict[str, Any]:
        m, s = config.model, config.sampling
        return dict(
            num_frames=m.num_frames,
            guidance_scale=s.guidance_scale,
            guidance_scale_2=m.get("guidance_scale_2") or None,
            negative_prompt=m.get("negative_prompt", ""),
        )

    @classmethod
    def load(
        cls, config: Any, *, pipelines: tuple[str, ...] = _PIPELINES
    ) -> tuple[WanT2VAdapter, dict[str, Any]]:
        """From a run config: adapter with its UMT5 text encoder.

        `config.model.path` is a Diffusers WanPipeline folder (anything else is an error
        naming what was found); `config.model.num_frames` the frames (4k + 1);
        `config.sampling.guidance_scale` the CFG scale; `config.model.flow_shift` (> 0)
        overrides the folder's schedule shift; `config.sampling.sigma_grid` picks the
        rollout grid ("pipeline": the folder's scheduler class). Returns (adapter,
        {"transformer": params, "vae": params}); for A14B the transformer params are
        {"transformer": high, "transformer_2": low}. Weights are stored in `config.model.param_dtype`,
        activations run in `config.model.dtype`.
        """
        m = config.model
        adapter, weights = cls.from_pretrained(
            m.path, dtype=m.param_dtype, attention=m.attention, remat=m.remat,
            shift=m.get("flow_shift", 0.0) or None, pipelines=pipelines,
            sigma_grid=config.sampling.get("sigma_grid", "pipeline"), **cls._runtime(config),
        )  # fmt: skip
        from ffjax.models.text.encode import load_wan_text

        adapter = adapter.replace(
            **adapter._activation_dtype_changes(m.dtype),
            text=load_wan_text(m.path, dtype=m.dtype),
            max_sequence_length=m.max_sequence_length,
        )
        return adapter, weights

    def _activation_dtype_changes(self, dtype: str) -> dict[str, Any]:
        """`replace` arguments for modules whose activations run in `dtype` (weights stay
        in param_dtype: the layers cast)."""
        changes: dict[str, Any] = {
            "transformer": WanTransformer(dataclasses.replace(self.config, dtype=dtype))
        }
        if self.transformer_2 is not None:
            changes["transformer_2"] = WanTransformer(
                dataclasses.replace(self.transformer_2.config, dtype=dtype)
            )
        if self.vae is not None:
            changes["vae"] = WanVAE(dataclasses.replace(self.vae_config, dtype=dtype))
            changes["vae_config"] = changes["vae"].config
        return changes

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: Any = "float32",
        *,
        shift: float | None = None,
        sigma_grid: str = "pipeline",
        attention: str = "auto",
        remat: str = "none",
        pipelines: tuple[str, ...] = _PIPELINES,
        **kwargs,
    ) -> tuple[WanT2VAdapter, dict[str, Any]]:
        """From a WanPipeline folder, without the text encoder (see `load`).

        kwargs: the constructor's num_frames, guidance_scale, guidance_scale_2,
        negative_prompt. `sigma_grid`: one of SIGMA_GRIDS ("pipeline": the folder's
        scheduler class decides). `pipelines`: the model_index.json classes accepted (the
        `wan2-i2v` adapter builds its core from WanImageToVideoPipeline folders).
        Returns (adapter, {"transformer": params, "vae": params}).
        """
        path = os.fspath(path)
        index = _check_folder(path, pipelines)
        runtime = dict(attention=attention, remat=remat)
        experts, params = {}, {}
        for name in EXPERTS:
            if index.get(name) and index[name][0] is not None:
                experts[name], params[name] = load_transformer(
                    os.path.join(path, name), dtype=dtype, **runtime
                )
        if "transformer" not in experts:
            raise ValueError(f"{path}: the pipeline has no transformer/ (WAN needs it)")
        vae, vp = load_vae(os.path.join(path, "vae"), dtype=dtype)
        boundary = index.get("boundary_ratio") if "transformer_2" in experts else None
        adapter = cls(
            experts["transformer"], vae, vae.config,
            shift=_pipeline_shift(path) if shift is None else shift,
            sigma_grid=resolve_sigma_grid(sigma_grid, path), boundary_ratio=boundary,
            transformer_2=experts.get("transformer_2"),
            expand_timesteps=bool(index.get("expand_timesteps", False)), **kwargs,
        )  # fmt: skip
        tp = params if adapter.two_experts else params["transformer"]
        return adapter, {"transformer": tp, "vae": vp}

    @classmethod
    def abstract_load(
        cls, config: Any, *, pipelines: tuple[str, ...] = _PIPELINES
    ) -> tuple[WanT2VAdapter, dict[str, Any]]:
        """`load` from the config.json files alone (for `--dry_run`): weights as
        `jax.ShapeDtypeStruct`s in `config.model.param_dtype`; no text encoder."""
        m = config.model
        index = _check_folder(m.path, pipelines)
        rt = dict(dtype=m.dtype, param_dtype=m.param_dtype, attention=m.attention, remat=m.remat)
        configs = {
            name: WanTransformerConfig.from_diffusers(os.path.join(m.path, name), **rt)
            for name in EXPERTS
            if index.get(name) and index[name][0] is not None
        }
        vc = WanVAEConfig.from_diffusers(
            os.path.join(m.path, "vae"), dtype=m.dtype, param_dtype=m.param_dtype
        )
        two = "transformer_2" in configs
        adapter = cls(
            WanTransformer(configs["transformer"]), WanVAE(vc), vc,
            shift=m.get("flow_shift", 0.0) or _pipeline_shift(m.path),
            sigma_grid=resolve_sigma_grid(config.sampling.get("sigma_grid", "pipeline"), m.path),
            boundary_ratio=index.get("boundary_ratio") if two else None,
            transformer_2=WanTransformer(configs["transformer_2"]) if two else None,
            expand_timesteps=bool(index.get("expand_timesteps", False)), **cls._runtime(config),
            max_sequence_length=m.max_sequence_length,
        )  # fmt: skip
        as_stored = lambda tree: weights_lib.as_stored(tree, m.param_dtype)
        tp = {n: as_stored(transformer_init_shapes(c)[1]) for n, c in configs.items()}
        weights = {
            "transformer": tp if two else tp["transformer"],
            "vae": as_stored(vae_init_shapes(vc)[1]),
        }
        return adapter, weights

    @classmethod
    def abstract_text_encoders(cls, config: Any) -> dict[str, Any]:
        """{name: params as `jax.ShapeDtypeStruct`s} of the UMT5 encoder `load` sets up."""
        from ffjax.models.text.convert import abstract_t5

        m = config.model
        path = os.path.join(m.path, "text_encoder")
        return {"text_encoder (UMT5)": abstract_t5(path, m.dtype, umt5=True)}

    @classmethod
    def text_encoder_specs(cls, config: Any) -> dict[str, Any]:
        """Logical `PartitionSpec`s of `abstract_text_encoders(config)` (same keys): the
        shardings `place_encoders` gives them, through `logical_shardings`."""
        from ffjax.models.text.convert import logical_specs

        path = os.path.join(config.model.path, "text_encoder")
        return {"text_encoder (UMT5)": logical_specs("umt5", path, config.model.dtype)}

    def place_encoders(self, mesh: jax.sharding.Mesh) -> None:
        """Shards the UMT5 params on `mesh` by their logical axes; prompts are then
        encoded there (`ffjax.models.text.placement`). Nothing to do without the encoder."""
        from ffjax.models.text.placement import place_encoders

        place_encoders(self.text, mesh)

    def abstract_cond(self, batch: int, height: int, width: int) -> WanCond:
        """The `encode_prompts` result for `batch` prompts as `jax.ShapeDtypeStruct`s."""
        self.latent_hw(height, width)
        embeds = jax.ShapeDtypeStruct(
            (batch, self.max_sequence_length, self.config.text_dim), jnp.dtype(self.config.dtype)
        )
        neg = jax.ShapeDtypeStruct((1, *embeds.shape[1:]), embeds.dtype) if self.do_cfg else None
        return jax.eval_shape(self.make_cond, embeds, neg)

    def logical_specs(self) -> dict[str, Any]:
        """Logical `PartitionSpec`s of the `load` weights, by weights key (shapes only)."""
        spec = lambda c: nn.get_partition_spec(transformer_init_shapes(c)[1])
        if self.two_experts:
            t = {"transformer": spec(self.config), "transformer_2": spec(self.transformer_2.config)}
        else:
            t = spec(self.config)
        specs = {"transformer": t}
        if self.vae is not None:
            specs["vae"] = nn.get_partition_spec(vae_init_shapes(self.vae_config)[1])
        return specs

    # ----------------------------------------------------------------- shapes

    @property
    def spatial_factor(self) -> int:
        return self.vae_config.spatial_factor

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) of H x W frames; ValueError unless both divide VAE factor x patch."""
        f = self.spatial_factor
        ph, pw = self.config.patch_size[1:]
        if height <= 0 or width <= 0 or height % (f * ph) or width % (f * pw):
            raise ValueError(
                f"video size {height}x{width} must be positive multiples of"
                f" {f * ph}x{f * pw} (VAE factor {f} x transformer patch {ph}x{pw})"
            )
        return height // f, width // f

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """Latent shape (B, f, h, w, z_dim) of `num_frames` H x W frames."""
        h, w = self.latent_hw(height, width)
        return batch, self.latent_frames, h, w, self.vae_config.z_dim

    def init_noise(self, key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
        """Standard normal latents float32[B, f, h, w, z_dim] (sigma = 1)."""
        return jax.random.normal(key, self.latent_shape(batch, height, width), jnp.float32)

    def sigmas(self, num_steps: int, height: int, width: int) -> np.ndarray:
        """The rollout grid float32[num_steps + 1] (`sigma_grid`; resolution-independent)."""
        if self.sigma_grid == "unipc_flow":
            return unipc_flow_rollout_sigmas(num_steps, self.shift)
        return fixed_shift_sigmas(num_steps, self.shift)

    def unipc_sigmas(
        self, num_steps: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """What WanPipeline's UniPCMultistepScheduler (use_flow_sigmas, flow_shift = shift)
        solves on, whatever the rollout grid: (solver sigmas float32[N + 1], the sigmas
        its transformer is evaluated at float32[N] = integer timesteps / 1000), the
        `sigmas` / `model_sigmas` of `ffjax.flow.unipc.unipc_sample`."""
        return (
            unipc_flow_sigmas(num_steps, self.shift),
            unipc_flow_rollout_sigmas(num_steps, self.shift)[:-1],
        )

    def boundary_timestep(self) -> float | None:
        """A14B: timesteps >= this go to `transformer` (Diffusers' boundary_ratio * 1000)."""
        return None if self.boundary_ratio is None else self.boundary_ratio * 1000

    # ----------------------------------------------------------------- conditioning

    def make_cond(self, prompt_embeds, negative_prompt_embeds=None) -> WanCond:
        """Bundles prompt embeddings float[B, S, D] (and the negative prompt's, float[1, S, D],
        one prompt for every row: broadcast to the batch, of which `velocity` reads row 0)."""
        embeds = jnp.asarray(prompt_embeds)
        b = embeds.shape[0]
        if negative_prompt_embeds is None or not self.do_cfg:
            return WanCond(prompt_embeds=embeds)
        neg = jnp.asarray(negative_prompt_embeds)
        if neg.shape != (1, *embeds.shape[1:]):
            raise ValueError(
                f"negative prompt embeddings {neg.shape} must be one row (1, S, D) of the"
                f" prompts' {embeds.shape}: one negative prompt serves every row"
            )
        neg = jnp.broadcast_to(neg, embeds.shape)
        return WanCond(
            prompt_embeds=embeds,
            negative_prompt_embeds=neg,
            guidance_scale=jnp.full((b,), self.guidance_scale, jnp.float32),
            guidance_scale_2=(
                jnp.full((b,), self.guidance_scale_2, jnp.float32) if self.two_experts else None
            ),
        )

    def _encode(self, prompts: list[str]) -> jax.Array:
        from ffjax.models.text.encode import encode_prompts_wan

        return encode_prompts_wan(
            self.text, prompts, max_sequence_length=self.max_sequence_length, cache=self.embed_cache
        )

    def encode_prompts(self, prompts: list[str], height: int, width: int) -> WanCond:
        """Prompts -> WanCond with `WanPipeline`'s UMT5 encoding (`load` first); with
        guidance the negative prompt is encoded once and shared by every row."""
        if self.text is None:
            raise ValueError("this WAN adapter has no text encoder; build it with .load(config)")
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not a string")
        self.latent_hw(height, width)  # size errors before any encoding
        embeds = self._encode(list(prompts))
        neg = self._encode([self.negative_prompt]) if self.do_cfg else None
        return self.make_cond(embeds, neg)

    def conditional_only(self, cond: WanCond) -> WanCond:
        """`cond` without the negative prompt: `velocity` then makes the conditional pass
        alone. The trainer's training-time conditioning when
        `config.algorithm.cfg_in_train=False`."""
        return cond.replace(
            negative_prompt_embeds=None, guidance_scale=None, guidance_scale_2=None,
            negative_kv=None,
        )  # fmt: skip

    def experts_of(self, sigma: np.ndarray) -> np.ndarray | None:
        """int[N] expert index (into EXPERTS) of rows at noise levels sigma float[N]
        (host), as `denoise` picks them; None for a one-expert model. The trainer groups
        micro-batches by it (optional adapter member)."""
        if not self.two_experts:
            return None
        high = np.asarray(sigma, np.float32) * np.float32(1000.0) >= self.boundary_timestep()
        return np.where(high, 0, 1).astype(np.int32)

    def with_expert(self, cond: WanCond, expert: int) -> WanCond:
        """`cond` whose rows all use expert `expert` (static: see WanCond.expert)."""
        return cond.replace(expert=int(expert))

    # ----------------------------------------------------------------- the contract

    def _experts(self, variables: Any) -> dict[str, tuple[WanTransformer, Any]]:
        """{expert name: (module, its variables)}: one entry, or the A14B pair."""
        if not self.two_experts:
            return {"transformer": (self.transformer, variables)}
        modules = {"transformer": self.transformer, "transformer_2": self.transformer_2}
        return {
            name: (modules[name], {k: v[name] for k, v in variables.items() if name in v})
            for name in EXPERTS
        }

    def prepare_cond(self, variables: Any, cond: WanCond, context_image=None) -> WanCond:
        """`cond` with every expert's cross-attention keys / values of the prompt (and
        negative prompt), computed once: rollouts call it before the denoising loop.
        `context_image`: the CLIP image states of image-attention models (wan2-i2v).

        The negative prompt's are computed for one row (it is the same in every row);
        its image keys / values are the prompt's (same image, same weights)."""
        if cond.kv is not None:
            return cond
        dtype = jnp.dtype(self.config.dtype)
        img = None if context_image is None else context_image.astype(dtype)

        def kv_of(embeds, img):
            return {
                name: module.apply(ev, embeds.astype(dtype), img, method="context_kv")
                for name, (module, ev) in self._experts(variables).items()
            }

        kv = kv_of(cond.prompt_embeds, img)
        negative_kv = None
        if cond.cfg:
            # Image attention needs an image: row 0's, whose K/V are then dropped for kv's.
            negative_kv = kv_of(cond.negative, None if img is None else img[:1])
            if img is not None:
                image_kv = lambda name: {k: kv[name][k] for k in ("k_img", "v_img")}
                negative_kv = {n: dict(negative_kv[n], **image_kv(n)) for n in negative_kv}
        return cond.replace(kv=kv, negative_kv=negative_kv)

    def _timestep(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        t = sigma * 1000.0  # the scheduler's timestep, what WanPipeline passes
        if not self.expand_timesteps:
            return t
        # Wan 2.2 TI2V: one timestep per latent token (frames x rows/2 x cols/2).
        _, f, h, w, _ = x.shape
        pt, ph, pw = self.config.patch_size
        n = (f // pt) * (h // ph) * (w // pw)
        return jnp.broadcast_to(t[:, None], (x.shape[0], n))

    def _expert_velocity(self, name, module, ev, x, t, cond, context_image=None) -> jax.Array:
        dtype = jnp.dtype(module.config.dtype)
        xin = x.astype(dtype)
        img = None if context_image is None else context_image.astype(dtype)

        def run(embeds, kv):
            if kv is not None:
                return module.apply(ev, xin, t, None, kv=kv[name])
            return module.apply(ev, xin, t, embeds.astype(dtype), img)

        v = run(cond.prompt_embeds, cond.kv).astype(jnp.float32)
        if not cond.cfg:
            return v
        v_neg = run(cond.negative, cond.negative_kv).astype(jnp.float32)  # batch-1 context
        scale = cond.guidance_scale_2 if name == "transformer_2" else cond.guidance_scale
        return guide(v, v_neg, scale)

    def velocity(self, variables: Any, x: jax.Array, sigma: jax.Array, cond: WanCond) -> jax.Array:
        """v = noise - x0 predicted at x_sigma, with CFG when `cond` carries it.

        Args:
          variables: denoiser variables {"params": ...} (+ "lora", "lora_scale" when
            training LoRA); for A14B each collection holds {"transformer": ...,
            "transformer_2": ...}.
          x: float32[B, f, h, w, z_dim] latents at noise level sigma.
          sigma: float32[B] in [0, 1].
          cond: WanCond of the batch.

        Returns:
          float32[B, f, h, w, z_dim]. For A14B, rows with sigma * 1000 >= the boundary
          use `transformer`, the others `transformer_2` (only the experts some row needs
          are evaluated when all rows agree, as in a rollout step).
        """
        return self.denoise(variables, x, sigma, cond)

    def denoise(
        self, variables: Any, x: jax.Array, sigma: jax.Array, cond: WanCond, *,
        timestep: jax.Array | None = None, context_image: jax.Array | None = None,
    ) -> jax.Array:  # fmt: skip
        """`velocity` for a model input `x` built by the caller (wan2-i2v: latents with
        their image condition), float32[B, f, h, w, out_channels]; `timestep` overrides
        sigma * 1000 (per-token TI2V timesteps), `context_image` goes to image
        cross-attention. The expert is still chosen from `sigma`."""
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        t = self._timestep(x, sigma) if timestep is None else timestep
        experts = self._experts(variables)
        fns = {name: (lambda n=name, me=me: self._expert_velocity(n, *me, x, t, cond,
                                                                  context_image))
               for name, me in experts.items()}  # fmt: skip
        if not self.two_experts:
            return fns["transformer"]()
        if cond.expert is not None:  # the caller grouped the rows: one expert, no switch
            return fns[EXPERTS[cond.expert]]()
        high = sigma * 1000.0 >= self.boundary_timestep()
        mixed = lambda: jnp.where(
            high.reshape((-1,) + (1,) * (x.ndim - 1)), fns["transformer"](), fns["transformer_2"]()
        )
        return jax.lax.cond(
            jnp.all(high),
            fns["transformer"],
            lambda: jax.lax.cond(jnp.any(high), mixed, fns["transformer_2"]),
        )

    def decode_latents(self, vae_params: Any, x: jax.Array, height: int, width: int) -> jax.Array:
        """Transformer-space latents -> float32[B, num_frames, H, W, 3] in [-1, 1]."""
        if self.vae is None:
            raise ValueError("this adapter was built without a VAE")
        z = from_transformer_space(x.astype(jnp.float32), self.vae_config)
        return self.vae.apply({"params": vae_params}, z, method="decode").astype(jnp.float32)

    def decode(self, vae_params: Any, x: jax.Array, height: int, width: int) -> jax.Array:
        """Latents -> uint8[B, num_frames, H, W, 3], rounded as Diffusers' post-processing."""
        video = self.decode_latents(vae_params, x, height, width)
        return jnp.round(jnp.clip(video / 2 + 0.5, 0.0, 1.0) * 255).astype(jnp.uint8)
