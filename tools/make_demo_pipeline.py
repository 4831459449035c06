"""Builds the embedded demo: a tiny FLUX.1-architecture text-to-image pipeline that
draws coloured shapes, pretrained on CPU and saved as a Diffusers FluxPipeline folder.

    python tools/make_demo_pipeline.py                        # -> assets/demo, ~12 min
    python tools/make_demo_pipeline.py --quick --out /tmp/d   # < 1 min; for tests

`python -m ffjax.train` (configs/demo.py) RL-fine-tunes this pipeline with the `shapes`
reward. The recipe must sample at height = width = 32 (IMAGE_SIZE) with
max_sequence_length = 16 (MAX_SEQUENCE_LENGTH: the model was trained on T5 states of
that length, padding included) and 8 steps; guidance_scale is ignored (the
transformer has no guidance embedding, and there is no CFG pass).

The build, everything seeded from `--seed`, identical bytes on a rerun:

1. prompts: `prompts/train.txt` (448) and `prompts/test.txt` (64), disjoint
   (`write_prompt_files`);
2. tokenizers: a BPE for CLIP (`tokenizer/`) that makes every grammar word one token,
   and a Unigram vocabulary of the grammar's words for T5 (`tokenizer_2/`). They are
   made here (`bpe_merges`), not by the `tokenizers` trainers, whose vocabularies come
   out in a different order in each process (Rust hash-map iteration);
3. text encoders: tiny random `CLIPTextModel` / `T5EncoderModel`, never trained (T5's
   random token embeddings and relative position biases are distinct enough);
4. VAE: a FLUX-style `AutoencoderKL` (3 levels: factor 4, 4 latent channels, 32 x 32
   images -> 8 x 8 x 4 latents -> 16 packed tokens of 16 channels) trained as an
   autoencoder on 8192 rendered scenes (L1 + L2 reconstruction + 1e-4 KL); its
   `shift_factor` / `scaling_factor` are then set so latents have mean 0 and std 1;
5. transformer: a `FluxTransformer2DModel` (2 double + 2 single blocks, width 96, 1.0 M
   parameters) trained by flow matching, x_s = (1 - s) x0 + s eps, target v = eps - x0
   (DESIGN.md), s ~ sigmoid(N(0, 1)) (logit-normal, Esser et al. 2024: test reward 0.32
   against 0.24 with s ~ U(0, 1)), AdaLN-Zero init, on 24 random layouts of each
   training prompt, conditioned on the JAX encoders' embeddings; the EMA is saved;
6. the folder: scheduler (FLUX.1's FlowMatchEulerDiscreteScheduler config, which
   `Flux1Adapter.sigmas` follows), vae and transformer (float32, `save_diffusers`),
   text encoders and tokenizers, model_index.json; `main` adds build_report.json.

Why 32 x 32: shapes are 8-11 px wide there, enough for the reward's shape templates,
and a 16-token image keeps a rollout cheap. Factor 4 and 4 latent channels beat
factor 4 x 8 channels (test reward 0.35 against 0.32) and factor 2 (64 tokens, 2x
slower, no better).

Measured on 2 shared CPU cores (assets/demo, seed 0, a quiet machine): VAE 233 s,
flow matching 453 s, 11.5 min in all plus 16 s for the report (17 min while another
job held one core); --quick 45 s. A rerun gives identical files (build_report.json
aside). The folder: 5.8 MB (transformer 4.1 MB, VAE 1.0 MB, text encoders 0.65 MB,
float32). Mean `shapes` reward of 8-step ODE samples (FluxPipeline schedule) on 2 x
64 test prompts 0.34 (position 0.33, two groups 0.35), on 128 training prompts 0.39
(counting 0.46); the true renders and their VAE reconstructions score 1.00. A rollout
of 16 samples x 8 steps + VAE decode takes 0.07 s once compiled (~220 samples/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import traverse_util  # noqa: E402
from flax.core import meta  # noqa: E402

from ffjax.data import shapes  # noqa: E402
from ffjax.models.flux.adapter import Flux1Adapter, pack_latents  # noqa: E402
from ffjax.models.flux.config import FluxTransformerConfig, FluxVAEConfig  # noqa: E402
from ffjax.models.flux.convert import save_diffusers  # noqa: E402
from ffjax.models.flux.transformer import FluxTransformer  # noqa: E402
from ffjax.models.flux.vae import FluxVAE, to_transformer_space  # noqa: E402

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo"
)
IMAGE_SIZE = 32  # pixels; shapes are 8-11 px wide, the smallest size the reward reads
MAX_SEQUENCE_LENGTH = 16  # T5 tokens and CLIP's model_max_length; the longest prompt takes 10
N_TRAIN, N_TEST = 448, 64  # prompts, of the 960 the grammar has
EVAL_STEPS = 8  # denoising steps of the demo recipe

# Diffusers configs of the components (the VAE's scaling and shift are fitted in `build`).
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[16, 32, 32],
    layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=8,
    sample_size=IMAGE_SIZE, scaling_factor=1.0, shift_factor=0.0, force_upcast=True,
    use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
)  # fmt: skip
TRANSFORMER_CONFIG = dict(
    patch_size=1, in_channels=4 * VAE_CONFIG["latent_channels"], num_layers=2,
    num_single_layers=2, attention_head_dim=24, num_attention_heads=4,
    joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
    axes_dims_rope=[8, 8, 8],
)  # fmt: skip
CLIP_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=MAX_SEQUENCE_LENGTH, bos_token_id=0, eos_token_id=1,
    pad_token_id=1,
)  # fmt: skip
T5_CONFIG = dict(
    d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=8, relative_attention_max_distance=16,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)  # fmt: skip
# FLUX.1's scheduler: `ffjax.flow.schedule.FLUX1_SCHEDULER`, which `Flux1Adapter.sigmas` uses.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
)  # fmt: skip
MODEL_INDEX = {  # FluxPipeline's components (what save_pretrained writes)
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


@dataclasses.dataclass(frozen=True)
class Options:
    """How long and on what each stage trains."""

    vae_steps: int = 1000
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_images: int = 8192  # rendered scenes the VAE trains on
    kl_weight: float = 1e-4  # per-element KL(q(z|x) || N(0, 1)) against per-pixel L1 + L2
    flow_steps: int = 3000
    flow_batch: int = 64
    flow_lr: float = 1e-3
    layouts: int = 24  # random layouts rendered per training prompt
    ema: float = 0.999
    sigma_sampler: str = "logit_normal"  # training sigmas: uniform | logit_normal
    eval_samples: int = 128  # samples scored per prompt set (test: 64 prompts x 2)


FULL = Options()
QUICK = Options(vae_steps=10, vae_images=256, flow_steps=10, layouts=1, eval_samples=16, ema=0.9)


# --------------------------------------------------------------------------- tokenizers


def grammar_words() -> list[str]:
    """Every word of every prompt of the grammar, with its frequency (repeats kept)."""
    words = []
    for specs in shapes.specs_by_task().values():
        for spec in specs:
            words += shapes.describe(spec).replace(",", " ,").split()
    return words + ["one", ".", ","]  # parse_prompt also reads these


def bpe_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """Byte-pair-encoding merges (Sennrich et al. 2016) until every word is one token.

    Each step merges the most frequent adjacent pair (word frequencies from `words`);
    ties go to the lexicographically smallest pair, so the result is deterministic.
    Symbols are characters, a word's last one suffixed with CLIP's "</w>".
    """
    freq = Counter(words)
    segs = {w: [*w[:-1], w[-1] + "</w>"] for w in sorted(freq)}
    merges = []
    while True:
        pairs: Counter = Counter()
        for w, s in segs.items():
            for p in zip(s[:-1], s[1:], strict=True):
                pairs[p] += freq[w]
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out


def make_clip_tokenizer(path: str, words: Sequence[str]) -> Any:
    """A CLIPTokenizer whose BPE makes each grammar word one token; saved to `path`."""
    from transformers import CLIPTokenizer

    merges = bpe_merges(words)
    alphabet = sorted(set("".join(words)) | set("abcdefghijklmnopqrstuvwxyz"))
    symbols = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    symbols += [a + b for a, b in merges]
    vocab = {s: i for i, s in enumerate(dict.fromkeys(symbols))}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_SEQUENCE_LENGTH)
    tok.save_pretrained(path)
    return tok


def make_t5_tokenizer(path: str, words: Sequence[str]) -> Any:
    """A T5Tokenizer (Unigram) with one piece per grammar word, characters as fallback."""
    from transformers import T5Tokenizer

    freq = Counter(words)
    total = sum(freq.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, math.log(freq[w] / total)) for w in sorted(freq)]
    alphabet = sorted(set("".join(words)) | set("abcdefghijklmnopqrstuvwxyz"))
    vocab += [(c, -20.0) for c in ["\u2581", *alphabet]]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=MAX_SEQUENCE_LENGTH)
    tok.save_pretrained(path)
    return tok


def make_text_encoders(out_dir: str, clip_vocab: int, t5_vocab: int, seed: int) -> None:
    """Random tiny CLIPTextModel (`text_encoder/`) and T5EncoderModel (`text_encoder_2/`)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=clip_vocab, **CLIP_CONFIG))
    clip.save_pretrained(os.path.join(out_dir, "text_encoder"))
    torch.manual_seed(seed + 1)
    t5 = T5EncoderModel(T5Config(vocab_size=t5_vocab, **T5_CONFIG))
    t5.save_pretrained(os.path.join(out_dir, "text_encoder_2"))


# --------------------------------------------------------------------------- data


def render_layouts(prompts: Sequence[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """uint8[len(prompts), n, S, S, 3]: n random layouts of each prompt."""
    return np.stack(
        [
            np.stack([shapes.render(shapes.scene_for_spec(p, rng), IMAGE_SIZE) for _ in range(n)])
            for p in prompts
        ]
    )


def to_unit(images: np.ndarray) -> jax.Array:
    """uint8 images -> float32 in [-1, 1] (Diffusers' VAE input range)."""
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------- training


# Adam directions after clipping the global gradient norm to 1; the learning rate is an
# argument of the jitted steps (host-side schedule), so one compile serves every build.
ADAM = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam())


def _adam(p: Any, s: Any, g: Any, lr: jax.Array, weight_decay: float = 0.0):
    """One Adam step (AdamW with weight_decay): (params, state)."""
    updates, s = ADAM.update(g, s, p)
    return jax.tree.map(lambda a, u: a - lr * (u + weight_decay * a), p, updates), s


def _lr(peak: float, warmup: int, steps: int):
    """Linear warm-up then cosine decay to 0."""
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1))


# Step functions are cached by their static settings, so a second build in the same
# process (the determinism test) reuses the compiled programs.


@functools.lru_cache(maxsize=4)
def _vae_step(config: FluxVAEConfig, kl_weight: float):
    module = FluxVAE(config)

    def loss_fn(p, x, k):
        mean, logvar = module.apply({"params": p}, x, method="encode")
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k, mean.shape)
        y = module.apply({"params": p}, z, method="decode")
        rec = jnp.mean(jnp.abs(y - x)) + jnp.mean((y - x) ** 2)
        kl = 0.5 * jnp.mean(mean**2 + jnp.exp(logvar) - 1.0 - logvar)
        return rec + kl_weight * kl, (rec, kl)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s, x, k, lr):
        (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, to_unit(x), k)
        p, s = _adam(p, s, g, lr)
        return p, s, aux

    return step


def train_vae(
    config: FluxVAEConfig, images: np.ndarray, opts: Options, key: jax.Array, log
) -> dict:
    """Autoencoder training: mean |x - D(z)| + (x - D(z))^2 + kl_weight KL(q(z|x) || N(0, I)),
    z ~ q(z|x) by reparameterisation (x in [-1, 1]); Adam, cosine decay. Returns params."""
    key, init_key, data_key = jax.random.split(key, 3)
    params = meta.unbox(FluxVAE(config).init(init_key, to_unit(images[:1]))["params"])
    opt_state = ADAM.init(params)
    step, lr = _vae_step(config, opts.kl_weight), _lr(opts.vae_lr, 50, opts.vae_steps)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(data_key)))
    for i in range(opts.vae_steps):
        batch = images[rng.integers(len(images), size=opts.vae_batch)]
        params, opt_state, (rec, kl) = step(
            params, opt_state, batch, jax.random.fold_in(key, i), jnp.float32(lr(i))
        )
        if i % 250 == 0 or i == opts.vae_steps - 1:
            log(f"  vae step {i:5d}  reconstruction {float(rec):.4f}  kl {float(kl):.3f}")
    return params


@functools.lru_cache(maxsize=4)
def _encoder(config: FluxVAEConfig):
    module = FluxVAE(config)
    return jax.jit(lambda p, x: module.apply({"params": p}, to_unit(x), method="encode"))


def encode_all(config: FluxVAEConfig, params: dict, images: np.ndarray, batch: int = 256):
    """(mean, logvar) float32[N, h, w, C] of uint8[N, S, S, 3] images."""
    parts = [_encoder(config)(params, images[i : i + batch]) for i in range(0, len(images), batch)]
    return tuple(np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(2))


def zero_init_modulation(params: dict) -> dict:
    """AdaLN-Zero (Peebles & Xie 2023): modulation and output layers start at zero, so
    every block starts as the identity and the velocity as 0."""
    flat = traverse_util.flatten_dict(params, sep="/")
    zero = ("norm1/", "norm1_context/", "single_blocks/norm/", "norm_out/")
    flat = {
        k: jnp.zeros_like(v) if any(z in k for z in zero) or k.startswith("proj_out/") else v
        for k, v in flat.items()
    }
    return traverse_util.unflatten_dict(flat, sep="/")


def sample_sigmas(key: jax.Array, n: int, sampler: str) -> jax.Array:
    """Training sigmas: "uniform" U(0, 1) or "logit_normal" sigmoid(N(0, 1)) (Esser et al.
    2024, sec. 3.1; here it beat uniform, and a half-uniform half-schedule mix, by 0.08)."""
    if sampler == "uniform":
        return jax.random.uniform(key, (n,))
    return jax.nn.sigmoid(jax.random.normal(key, (n,)))


@functools.lru_cache(maxsize=4)
def _flow_step(config: FluxTransformerConfig, vae_config: FluxVAEConfig, ema: float, sampler: str):
    adapter = Flux1Adapter(FluxTransformer(config), None, vae_config)

    def loss_fn(p, x0, sigma, noise, cond):
        x = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        v = adapter.velocity({"params": p}, x, sigma, cond)
        return jnp.mean((v - (noise - x0)) ** 2)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(p, s, e, data, idx, k, lr):
        mean, logvar, embeds, pooled = data
        k1, k2, k3 = jax.random.split(k, 3)
        m, lv = mean[idx[:, 0], idx[:, 1]], logvar[idx[:, 0], idx[:, 1]]
        z = m + jnp.exp(0.5 * lv) * jax.random.normal(k1, m.shape)
        x0 = pack_latents(to_transformer_space(z, vae_config))
        sigma = sample_sigmas(k2, idx.shape[0], sampler)
        noise = jax.random.normal(k3, x0.shape)
        cond = adapter.make_cond(embeds[idx[:, 0]], pooled[idx[:, 0]], IMAGE_SIZE, IMAGE_SIZE)
        loss, g = jax.value_and_grad(loss_fn)(p, x0, sigma, noise, cond)
        p, s = _adam(p, s, g, lr, weight_decay=0.01)
        e = jax.tree.map(lambda a, b: ema * a + (1 - ema) * b, e, p)
        return p, s, e, loss

    return adapter, step


def train_flow(
    config: FluxTransformerConfig,
    vae_config: FluxVAEConfig,
    latents: tuple[np.ndarray, np.ndarray],
    embeds: np.ndarray,
    pooled: np.ndarray,
    opts: Options,
    key: jax.Array,
    log,
) -> dict:
    """Rectified flow matching: E || v(x_s, s, c) - (eps - x0) ||^2, s from
    `opts.sigma_sampler`, x0 the packed, normalised latent (z ~ q(z|x)) of a random
    layout of prompt c; AdamW, cosine decay. Returns the EMA of the parameters.

    latents: (mean, logvar) float32[P, K, h, w, C] for K layouts of each of P prompts;
    embeds, pooled: the P prompts' T5 states and CLIP pooled outputs.
    """
    adapter, step = _flow_step(config, vae_config, opts.ema, opts.sigma_sampler)
    data = tuple(jnp.asarray(a) for a in (*latents, embeds, pooled))
    n_prompts, n_layouts = latents[0].shape[:2]
    cond = adapter.make_cond(embeds[:1], pooled[:1], IMAGE_SIZE, IMAGE_SIZE)
    x = jnp.zeros(adapter.latent_shape(1, IMAGE_SIZE, IMAGE_SIZE))
    key, init_key, data_key = jax.random.split(key, 3)
    params = adapter.transformer.init(init_key, x, cond.prompt_embeds, cond.pooled_prompt_embeds,
                                      jnp.ones(1), cond.img_ids[0], cond.txt_ids[0])["params"]  # fmt: skip
    params = zero_init_modulation(meta.unbox(params))
    opt_state, ema = ADAM.init(params), jax.tree.map(jnp.copy, params)
    lr = _lr(opts.flow_lr, 100, opts.flow_steps)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(data_key)))
    losses = []
    for i in range(opts.flow_steps):
        idx = np.stack([rng.integers(n_prompts, size=opts.flow_batch),
                        rng.integers(n_layouts, size=opts.flow_batch)], 1)  # fmt: skip
        params, opt_state, ema, loss = step(
            params, opt_state, ema, data, idx, jax.random.fold_in(key, i), jnp.float32(lr(i))
        )
        losses.append(loss)
        if i % 250 == 0 or i == opts.flow_steps - 1:
            log(f"  flow step {i:5d}  loss {float(np.mean(losses[-100:])):.4f}")
    return ema


# --------------------------------------------------------------------------- sampling


def sample(
    adapter: Flux1Adapter, weights: dict, cond: Any, key: jax.Array, num_steps: int = EVAL_STEPS
) -> np.ndarray:
    """uint8[B, S, S, 3]: Euler ODE samples from seeded noise (the trainer's rollout + decode)."""
    from ffjax.flow import rollout as rollout_lib

    b = cond.prompt_embeds.shape[0]
    noise = adapter.init_noise(key, b, IMAGE_SIZE, IMAGE_SIZE)
    sigmas = adapter.sigmas(num_steps, IMAGE_SIZE, IMAGE_SIZE)
    final, _ = rollout_lib.rollout(adapter.velocity, {"params": weights["transformer"]}, cond,
                                   noise, sigmas, np.zeros(num_steps, np.float32), key,
                                   dynamics="ode")  # fmt: skip
    return np.asarray(_decode(adapter, weights["vae"], final))


@functools.partial(jax.jit, static_argnums=(0,))
def _decode(adapter, vae_params, x):
    return adapter.decode(vae_params, x, IMAGE_SIZE, IMAGE_SIZE)


def shapes_reward(prompts: Sequence[str], images: np.ndarray) -> np.ndarray:
    from ffjax.rewards.base import Samples
    from ffjax.rewards.shapes import ShapesReward

    return ShapesReward()(Samples(list(prompts), images=np.asarray(images)))


# --------------------------------------------------------------------------- build


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def save_common(out_dir: str) -> None:
    """scheduler/ and model_index.json (diffusers' own writer for the scheduler)."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(
        os.path.join(out_dir, "scheduler")
    )
    index = {"_class_name": "FluxPipeline", "_diffusers_version": diffusers.__version__}
    index.update(MODEL_INDEX)
    with open(os.path.join(out_dir, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


def build(
    out_dir: str,
    *,
    seed: int = 0,
    quick: bool = False,
    steps: int | None = None,
    evaluate: bool = True,
    log=print,
) -> dict[str, Any]:
    """Builds the demo pipeline into `out_dir`; returns the report's numbers.

    Args:
      out_dir: the FluxPipeline folder to write (created; existing files overwritten).
      seed: the one seed everything derives from.
      quick: a fast, low-quality build (tests).
      steps: flow-matching steps (default: the mode's).
      evaluate: sample from the saved pipeline and score it (the report's rewards).
      log: where progress lines go.
    """
    t_start = time.time()
    opts = QUICK if quick else FULL
    if steps is not None:
        opts = dataclasses.replace(opts, flow_steps=steps)
    os.makedirs(out_dir, exist_ok=True)
    key = jax.random.key(seed)
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"options": dataclasses.asdict(opts)}

    # 1-3: prompts, tokenizers, text encoders.
    train_path, test_path = shapes.write_prompt_files(
        os.path.join(out_dir, "prompts"), N_TRAIN, N_TEST, seed
    )
    with open(train_path) as f_train, open(test_path) as f_test:
        train_prompts, test_prompts = f_train.read().splitlines(), f_test.read().splitlines()
    words = grammar_words()
    clip_tok = make_clip_tokenizer(os.path.join(out_dir, "tokenizer"), words)
    t5_tok = make_t5_tokenizer(os.path.join(out_dir, "tokenizer_2"), words)
    make_text_encoders(out_dir, len(clip_tok), len(t5_tok), seed)
    save_common(out_dir)
    from ffjax.models.text.encode import encode_prompts_flux, load_flux_text

    text = load_flux_text(out_dir)
    encode = lambda ps: encode_prompts_flux(text, ps, max_sequence_length=MAX_SEQUENCE_LENGTH)

    # 4: VAE.
    t0 = time.time()
    vae_config = FluxVAEConfig.from_diffusers({"_class_name": "AutoencoderKL", **VAE_CONFIG})
    vae_images = np.stack(
        [shapes.render(shapes.sample_scene(rng), IMAGE_SIZE) for _ in range(opts.vae_images)]
    )
    key, k = jax.random.split(key)
    vae_params = train_vae(vae_config, vae_images, opts, k, log)
    layouts = render_layouts(train_prompts, opts.layouts, rng)
    flat = layouts.reshape(-1, *layouts.shape[2:])
    mean, logvar = encode_all(vae_config, vae_params, flat)
    shift, scale = float(mean.mean()), float(1.0 / mean.std())
    vae_config = dataclasses.replace(vae_config, shift_factor=shift, scaling_factor=scale)
    report["vae_seconds"] = time.time() - t0
    log(f"VAE trained in {report['vae_seconds']:.0f} s; latent shift {shift:.4f} scale {scale:.4f}")
    save_diffusers("vae", vae_config, vae_params, os.path.join(out_dir, "vae"))

    # 5: transformer.
    t0 = time.time()
    tr_config = FluxTransformerConfig.from_diffusers(
        {"_class_name": "FluxTransformer2DModel", **TRANSFORMER_CONFIG}
    )
    embeds, pooled, _ = encode(train_prompts)
    shape = layouts.shape[:2] + mean.shape[1:]
    key, k = jax.random.split(key)
    tr_params = train_flow(tr_config, vae_config, (mean.reshape(shape), logvar.reshape(shape)),
                           np.asarray(embeds), np.asarray(pooled), opts, k, log)  # fmt: skip
    report["flow_seconds"] = time.time() - t0
    save_diffusers("transformer", tr_config, tr_params, os.path.join(out_dir, "transformer"))
    report["build_seconds"] = time.time() - t_start

    # 6: report, on what was saved.
    if evaluate:
        adapter, weights = Flux1Adapter.from_pretrained(out_dir)
        report.update(score(adapter, weights, encode, train_prompts, test_prompts, opts, seed))
    report["bytes"] = {
        d: _folder_bytes(os.path.join(out_dir, d)) for d in sorted(os.listdir(out_dir))
        if os.path.isdir(os.path.join(out_dir, d))
    }  # fmt: skip
    report["bytes"]["total"] = _folder_bytes(out_dir)
    report["params"] = {
        "vae": sum(a.size for a in jax.tree.leaves(vae_params)),
        "transformer": sum(a.size for a in jax.tree.leaves(tr_params)),
    }
    report["total_seconds"] = time.time() - t_start
    return report


def task_of(prompt: str) -> str:
    """The GenEval-like task of a prompt: counting, two groups or position."""
    spec = shapes.parse_prompt(prompt)
    if spec.relation is not None:
        return "position"
    return "counting" if len(spec.groups) == 1 else "two groups"


def score(adapter, weights, encode, train_prompts, test_prompts, opts, seed) -> dict:
    """Mean `shapes` rewards of 8-step ODE samples, of the true renders and of their VAE
    reconstructions (test prompts, and as many training prompts); rollout speed."""
    out: dict[str, Any] = {}
    rng = np.random.default_rng(seed + 1)
    for name, prompts in (("test", test_prompts), ("train", train_prompts)):
        prompts = [prompts[i % len(prompts)] for i in range(opts.eval_samples)]
        embeds, pooled, _ = encode(prompts)
        cond = adapter.make_cond(embeds, pooled, IMAGE_SIZE, IMAGE_SIZE)
        rewards = shapes_reward(prompts, sample(adapter, weights, cond, jax.random.key(seed + 2)))
        truth = np.stack(
            [shapes.render(shapes.scene_for_spec(p, rng), IMAGE_SIZE) for p in prompts]
        )
        recon = np.asarray(_decode(adapter, weights["vae"], encode_vae(adapter, weights, truth)))
        out[f"reward_{name}"] = float(rewards.mean())
        out[f"reward_{name}_truth"] = float(shapes_reward(prompts, truth).mean())
        out[f"reward_{name}_vae"] = float(shapes_reward(prompts, recon).mean())
        tasks = np.array([task_of(p) for p in prompts])
        out[f"reward_{name}_by_task"] = {
            t: float(rewards[tasks == t].mean()) for t in sorted(set(tasks))
        }
    # Rollout speed: a GRPO epoch's 16 samples x EVAL_STEPS steps + decode, compiled.
    embeds, pooled, _ = encode(test_prompts[:16])
    cond = adapter.make_cond(embeds, pooled, IMAGE_SIZE, IMAGE_SIZE)
    sample(adapter, weights, cond, jax.random.key(0))
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        sample(adapter, weights, cond, jax.random.key(i))
        times.append(time.perf_counter() - t0)
    out["rollout_seconds_16x8"] = float(np.median(times))
    return out


def encode_vae(adapter, weights, images) -> jax.Array:
    """Packed transformer-space latents (posterior means) of uint8 images."""
    mean, _ = adapter.vae.apply({"params": weights["vae"]}, to_unit(images), method="encode")
    return pack_latents(to_transformer_space(mean, adapter.vae_config))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--steps", type=int, default=None, help="flow-matching steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fast low-quality build (tests)")
    args = p.parse_args(argv)
    if args.out is None and args.quick:
        p.error("--quick makes a low-quality pipeline: give --out (not the committed assets)")
    args.out = args.out or DEFAULT_OUT
    report = build(args.out, seed=args.seed, quick=args.quick, steps=args.steps)
    text = json.dumps(report, indent=2)
    print(text)
    with open(os.path.join(args.out, "build_report.json"), "w") as f:
        f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
