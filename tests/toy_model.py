"""A tiny flow model behind the model-adapter protocol, for fast trainer and learning tests.

Latents are float32[B, 16]; the "decoder" shows them as a 4x4 grey image enlarged to
height x width, so `brightness` rewards larger latents. The denoiser is a small MLP of
ffjax `Dense` layers (so LoRA applies) conditioned on sigma and a per-prompt embedding.
Select it with `config.model.name = "tests.toy_model:ToyAdapter"`.
"""

from __future__ import annotations

import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.models.adapter import AdapterBase
from ffjax.models.layers import Dense

DIM = 16
EMB = 8


class ToyDenoiser(nn.Module):
    hidden: int = 32

    @nn.compact
    def __call__(self, x, sigma, emb):
        h = jnp.concatenate([x, sigma[:, None], emb], axis=-1)
        h = nn.gelu(Dense(self.hidden, name="fc1")(h))
        h = nn.gelu(Dense(self.hidden, name="fc2")(h))
        return Dense(DIM, name="out")(h)


class ToyAdapter(AdapterBase):
    """Implements load / encode_prompts / init_noise / sigmas / velocity / decode; the
    optional capabilities keep AdapterBase's defaults."""

    denoiser = "denoiser"
    lora_targets = ("fc1", "fc2", "out")

    def __init__(self, seed: int = 0):
        self.module = ToyDenoiser()
        self.seed = seed

    @classmethod
    def load(cls, config):
        adapter = cls(config.seed)
        x = jnp.zeros((1, DIM))
        params = adapter.module.init(jax.random.key(1234), x, jnp.ones((1,)), jnp.zeros((1, EMB)))
        # A "pretrained" model: pull the output layer in so samples stay near N(0, 1).
        params = nn.unbox(params["params"])
        params["out"]["kernel"] = params["out"]["kernel"] * 0.3
        return adapter, {"denoiser": params, "vae": {}}

    def encode_prompts(self, prompts, height, width):
        emb = np.stack([
            np.random.default_rng(zlib.crc32(p.encode())).standard_normal(EMB) for p in prompts
        ]).astype(np.float32)  # fmt: skip
        return {"emb": jnp.asarray(emb)}

    def init_noise(self, key, batch, height, width):
        return jax.random.normal(key, (batch, DIM), jnp.float32)

    def sigmas(self, num_steps, height, width):
        return np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float32)

    def velocity(self, variables, x, sigma, cond):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        return self.module.apply(variables, x, sigma, cond["emb"])

    def decode(self, vae_weights, x, height, width):
        img = x.reshape(x.shape[0], 4, 4)
        img = jnp.repeat(jnp.repeat(img, height // 4, axis=1), width // 4, axis=2)
        img = jnp.clip(127.5 + 50.0 * img, 0, 255)
        return jnp.round(jnp.broadcast_to(img[..., None], img.shape + (3,))).astype(jnp.uint8)


class PartlyNan:
    """Brightness-like reward that fails (NaN) for every `every`-th sample."""

    kind = "pointwise"
    name = "partly_nan"

    def __init__(self, every: int = 4):
        self.every = every

    def __call__(self, samples):
        r = samples.images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
        r[:: self.every] = np.nan
        return r.astype(np.float32)


class NanFromCall:
    """Brightness-like reward that returns all NaN from its `start`-th call on."""

    kind = "pointwise"
    name = "nan_from_call"

    def __init__(self, start: int = 2):
        self.start, self.calls = start, 0

    def __call__(self, samples):
        self.calls += 1
        r = samples.images.astype(np.float32).mean(axis=(1, 2, 3)) / 255.0
        return np.full_like(r, np.nan) if self.calls >= self.start else r


def toy_config(tmp_path, algorithm: str = "grpo", num_prompts: int = 4):
    """A validated-shape config for the toy model: 4 prompts x 4 samples, 8 steps."""
    from ffjax import configs

    data = tmp_path / "prompts"
    data.mkdir(exist_ok=True)
    (data / "train.txt").write_text("\n".join(f"toy prompt {i}" for i in range(num_prompts)))
    c = configs.base_config()
    c.model.name = "tests.toy_model:ToyAdapter"
    c.model.path = str(tmp_path)
    c.model.height = c.model.width = 8
    c.data.path = str(data)
    c.data.group_size = 4
    c.data.prompts_per_epoch = 4
    c.sampling.num_steps = 8
    c.sampling.eval_num_steps = 8
    c.sampling.noise_level = 0.7
    c.sampling.sde_num_steps = 2
    c.train.num_epochs = 2
    c.train.micro_batch_size = 8
    c.train.lora_rank = 4
    c.train.lora_alpha = 4.0
    c.train.learning_rate = 1e-3
    c.train.eval_every = 0
    c.checkpoint.every_epochs = 0
    c.logging.tensorboard = False
    c.logging.image_grid_every = 0
    configs.set_algorithm(c, algorithm)
    # The toy tests were tuned with flow_grpo's std + 1e-4; measured 2026-12-07, 20 GRPO
    # epochs of test_learning_raises_reward: +0.105 with it, +0.035 with Flow-Factory's
    # max(std, 1e-6) (the brightness of a toy group varies by ~1e-4: noise, normalised).
    c.train.advantage_eps = "flow_grpo"
    configs.add_reward(c, "brightness")
    return c
