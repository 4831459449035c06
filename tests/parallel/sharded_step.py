"""The trainer's train step on a tiny FLUX.1 transformer, on several meshes; prints JSON.

Run by tests/parallel/test_mesh.py in a fresh process with 8 fake CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python -m tests.parallel.sharded_step

For each mesh, `trainer.setup` builds the mesh and places the weights and state
(DiffusionNFT, off-policy so the EMA is read, LoRA on the FLUX targets); two train
steps then run on the same rows. Output: {mesh name: {"loss", "grad_norm" (per step),
"trainable" ({path: values} after the steps), "specs" ({tree: [partition specs of
its leaves after the steps]})}}.
"""

from __future__ import annotations

import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ffjax import configs, trainer
from ffjax.algorithms.spec import Frozen
from ffjax.models.flux.adapter import Flux1Adapter, FluxCond
from ffjax.models.flux.config import FluxTransformerConfig
from ffjax.models.flux.convert import transformer_init_shapes
from ffjax.models.flux.transformer import FluxTransformer
from ffjax.parallel import sharding

# Divisible by 8 where the rules shard (embed 32 over fsdp, heads x head_dim 32 and
# mlp 128 over tensor); 16 image tokens (4 x 4 latent patches), 8 text tokens.
TINY = FluxTransformerConfig(
    in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
    guidance_embeds=False, axes_dims_rope=(4, 6, 6), attention="xla",
)  # fmt: skip
SAMPLES, TXT, IMG, STEPS = 8, 8, 16, 2

MESHES = {  # name: (config.mesh, number of devices)
    "1 device": (dict(data=1), 1),
    "data=8": (dict(data=8), 8),
    "fsdp=8": (dict(data=1, fsdp=8), 8),
    "tensor=2 x fsdp=4": (dict(data=1, fsdp=4, tensor=2), 8),
    # The token streams over `sequence` (8 + 16 joint tokens; axes.constrain).
    "sequence=4 x data=2": (dict(data=2, sequence=4), 8),
}


class TinyFluxAdapter(Flux1Adapter):
    """Flux1Adapter over a random tiny transformer (no files, no VAE, no text encoders)."""

    @classmethod
    def load(cls, config):
        _, abstract = transformer_init_shapes(TINY)
        flat = traverse_util.flatten_dict(
            jax.tree.map(lambda a: a.shape, _unbox(abstract)), sep="/"
        )
        rng = np.random.default_rng(0)
        params = {
            k: (1.0 if k.endswith("scale") else 0.0) + 0.2 * rng.standard_normal(s, np.float32)
            for k, s in sorted(flat.items())
        }
        params = traverse_util.unflatten_dict(params, sep="/")
        return cls(FluxTransformer(TINY)), {"transformer": params, "vae": {}}


def _unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


def make_config(data_dir: str, mesh: dict) -> configs.ConfigDict:
    c = configs.base_config()
    c.model.name = "tests.parallel.sharded_step:TinyFluxAdapter"
    c.model.path = data_dir  # unused by TinyFluxAdapter
    c.data.path = data_dir
    c.data.group_size = 2
    c.data.prompts_per_epoch = SAMPLES // 2
    c.sampling.noise_level = 0.0
    c.train.micro_batch_size = SAMPLES
    c.train.lora_rank = 4
    c.train.lora_alpha = 4.0
    c.train.learning_rate = 1e-3
    configs.set_algorithm(c, "nft")
    c.algorithm.num_train_timesteps = 2
    configs.add_reward(c, "brightness")
    for k, v in mesh.items():
        c.mesh[k] = v
    return configs.validate(c)


def make_inputs():
    """(samples, rows) as run_epoch builds them for a "final"-record algorithm."""
    rng = np.random.default_rng(1)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(IMG, 2)
    img_ids = np.concatenate([np.zeros((IMG, 1)), grid], -1).astype(np.float32)
    cond = FluxCond(
        prompt_embeds=jnp.asarray(f32(SAMPLES, TXT, TINY.joint_attention_dim)),
        pooled_prompt_embeds=jnp.asarray(f32(SAMPLES, TINY.pooled_projection_dim)),
        txt_ids=jnp.zeros((SAMPLES, TXT, 3)),
        img_ids=jnp.asarray(np.broadcast_to(img_ids, (SAMPLES, IMG, 3))),
    )
    n = SAMPLES * 2
    samples = {"cond": cond, "x0": jnp.asarray(f32(SAMPLES, IMG, TINY.in_channels))}
    rows = {
        "sample": jnp.repeat(jnp.arange(SAMPLES, dtype=jnp.int32), 2),
        "row_id": jnp.arange(n, dtype=jnp.int32),
        "sigma": jnp.asarray(rng.uniform(0.1, 0.9, n).astype(np.float32)),
        "advantage": jnp.asarray(f32(n)),
    }
    order = rng.permutation(n).astype(np.int32)
    return samples, rows, [order[i * SAMPLES : (i + 1) * SAMPLES] for i in range(STEPS)]


def _specs(tree) -> list[str]:
    return [str(a.sharding.spec) for a in jax.tree.leaves(tree)]


def run_mesh(data_dir: str, mesh: dict, num_devices: int) -> dict:
    run = trainer.setup(make_config(data_dir, mesh), devices=jax.devices()[:num_devices])
    samples, rows, orders = make_inputs()
    # As run_epoch: rollout outputs and rows are row-sharded over (data, fsdp).
    samples = jax.device_put(samples, sharding.batch_shardings(samples, run.mesh))
    rows = jax.device_put(rows, sharding.batch_shardings(rows, run.mesh))
    frozen = Frozen(base=run.base, ref=run.ref, ema=None, snapshot=None)
    state, losses, norms = run.initial, [], []
    key = jax.random.key(0)
    for j, order in enumerate(orders):
        idx = jnp.asarray(order)
        state, metrics = run.train_step(
            state,
            frozen,
            samples,
            rows,
            idx,
            jax.random.fold_in(key, 99),
            jax.random.fold_in(key, j),
        )
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    flat = traverse_util.flatten_dict(jax.device_get(state.trainable), sep="/")
    return {
        "loss": losses,
        "grad_norm": norms,
        "trainable": {k: np.asarray(v, np.float64).ravel().tolist() for k, v in flat.items()},
        "specs": {
            "trainable": _specs(state.trainable),
            "opt_state": _specs(state.opt_state),
            "ema": _specs(state.ema),
            "base_params": _specs(run.base["params"]),
        },
    }


def main() -> None:
    if jax.device_count() < 8:
        sys.exit(
            f"needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), got {jax.device_count()}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/train.txt", "w") as f:
            f.write("\n".join(f"prompt {i}" for i in range(SAMPLES // 2)))
        out = {name: run_mesh(tmp, mesh, n) for name, (mesh, n) in MESHES.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
