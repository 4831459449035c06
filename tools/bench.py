"""Benchmark an ffjax transformer against its Diffusers/PyTorch original, same config.

    python tools/bench.py --family flux --size tiny            # CPU, seconds
    python tools/bench.py --family flux --size small
    python tools/bench.py --family flux --size dev --dtype bfloat16 --attention cudnn \
        --remat full                                           # GPU: FLUX.1-dev dims, MFU
    python tools/bench.py --family qwen_image --size tiny      # Qwen-Image transformer
    python tools/bench.py --family wan --size tiny             # WAN 2.1 step, kv= step, VAE
    python tools/bench.py --family wan --size dev --video 5 64 64 --vae-frames  # 1.3B, CPU
    python tools/bench.py --family wan --size dev --device gpu --dtype bfloat16 \
        --attention cudnn                                      # GPU: 1.3B, 81x480x832, MFU
    python tools/bench.py --family wan --size dev --compile-only --no-torch --layers 1 \
        --vae-frames 17 81                                     # Wan 2.1 VAE memory, 480x832

Times, in one process on one machine: (1) a transformer forward, (2) an N-step Euler
rollout (the sampler's inner loop), (3) forward + backward of a mean-square loss
w.r.t. all parameters. Each is compiled / warmed up first, then timed as the median of
`--repeats` runs; prints a markdown table with PyTorch / ffjax ratios (> 1: ffjax
faster) and, on an accelerator, the model-FLOPs utilisation of ffjax against the
device's bf16 peak. tiny / small copy the PyTorch weights into ffjax through the
converter (same numbers both sides); dev uses random weights on each side (timings
only; 12B parameters are never built on CPU).

Families are rows of FAMILIES, so Qwen-Image and WAN plug in with their own builders.
WAN measures other rows (`build_wan`): a denoising step with and without the
cross-attention K/V precomputed (`kv=`, the rollout path), `context_kv`, and VAE
decodes at two frame counts with their compiled memory (`memory_analysis()`); its dev
size is the Wan2.1-T2V-1.3B shape with weights copied from PyTorch, so `--layers`,
`--video` and `--vae-frames` shrink it for a CPU; `--compile-only` compiles every row
and prints the compiled memory without running anything. `--device gpu` runs on CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable

# Don't let JAX grab 75% of GPU memory up front: PyTorch runs in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# Dense bf16 peak FLOP/s by device kind (NVIDIA datasheets, SXM parts, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}

FLUX_SIZES = {
    "tiny": dict(
        transformer=dict(num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                         joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6)),
        image=64, text_len=16,
    ),
    "small": dict(
        transformer=dict(num_layers=2, num_single_layers=4, attention_head_dim=64, num_attention_heads=4,
                         joint_attention_dim=256, pooled_projection_dim=64, axes_dims_rope=(16, 24, 24)),
        image=256, text_len=64,
    ),
    # FLUX.1-dev: 19 double + 38 single blocks, 24 x 128 heads, T5-XXL 4096, CLIP-L 768.
    "dev": dict(transformer=dict(), image=1024, text_len=512),
}  # fmt: skip


@dataclasses.dataclass
class Case:
    """One benchmark set-up: callables for both frameworks plus FLOP counts."""

    jax_forward: Callable[[], object]
    jax_rollout: Callable[[], object]
    jax_fwd_bwd: Callable[[], object]
    torch_forward: Callable[[], object] | None
    torch_rollout: Callable[[], object] | None
    torch_fwd_bwd: Callable[[], object] | None
    forward_flops: float
    description: str
    # Rows (name, ffjax call, PyTorch call or None, FLOPs) replacing the three above,
    # and lines printed after the table (e.g. compiled memory), for families that
    # measure other things.
    rows: list[tuple[str, Callable[[], object], Callable[[], object] | None, float]] | None = None
    notes: Callable[[], list[str]] | None = None


def flux_forward_flops(cfg, batch: int, n_img: int, n_txt: int) -> float:
    """Matmul FLOPs of one FLUX transformer forward (2 per multiply-add; norms ignored)."""
    d, n = cfg.inner_dim, n_img + n_txt
    attn = 4 * n * n * d  # q k^T and p v
    double = 2 * n * d * 3 * d + attn + 2 * n * d * d + 2 * n * d * 8 * d + 2 * 2 * d * 6 * d
    single = 2 * n * d * 3 * d + 2 * n * d * 4 * d + attn + 2 * n * 5 * d * d + 2 * d * 3 * d
    io = (
        2 * n_img * cfg.in_channels * d
        + 2 * n_txt * cfg.joint_attention_dim * d
        + 2 * n_img * d * cfg.output_channels
    )
    return batch * (cfg.num_layers * double + cfg.num_single_layers * single + io)


def build_flux(
    size: str, batch: int, steps: int, dtype: str, attention: str, remat: str, with_torch: bool
) -> Case:
    import torch

    from ffjax.models.flux.config import FluxTransformerConfig
    from ffjax.models.flux.convert import transformer_init_shapes, transformer_rules
    from ffjax.models.weights import ArraySource, flat_shapes, load_params

    spec = FLUX_SIZES[size]
    diff_cfg = dict(in_channels=64, guidance_embeds=True, **spec["transformer"])
    cfg = FluxTransformerConfig(
        **diff_cfg, dtype=dtype, param_dtype=dtype, attention=attention, remat=remat
    )
    side = spec["image"] // 16
    n_img, n_txt = side * side, spec["text_len"]
    dev = "cuda" if jax.default_backend() == "gpu" else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, n_img, cfg.in_channels)).astype(np.float32)
    txt = rng.normal(size=(batch, n_txt, cfg.joint_attention_dim)).astype(np.float32)
    pooled = rng.normal(size=(batch, cfg.pooled_projection_dim)).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    img_ids = np.stack([np.zeros_like(rows), rows, cols], -1).reshape(-1, 3).astype(np.float32)
    txt_ids = np.zeros((n_txt, 3), np.float32)
    sigmas = np.linspace(1.0, 0.0, steps + 1, dtype=np.float32)
    guidance = np.full((batch,), 3.5, np.float32)

    torch_model = None
    if with_torch or size != "dev":
        from diffusers import FluxTransformer2DModel

        torch.manual_seed(0)
        with torch.device(dev):
            torch_model = FluxTransformer2DModel(**diff_cfg).eval()
            if tdtype != torch.float32:
                torch_model = torch_model.to(tdtype)

    module, abstract = transformer_init_shapes(cfg)
    if size == "dev":  # random init on device; never materialise 12B params on host
        from flax.core import meta

        small = [
            jnp.asarray(a)
            for a in (x[:1, :4], txt[:1, :2], pooled[:1], guidance[:1], img_ids[:4], txt_ids[:2])
        ]
        lat, enc, pool, g1, iid, tid = small
        init = jax.jit(
            lambda: module.init(jax.random.key(0), lat, enc, pool, g1, iid, tid, g1)["params"]
        )
        params = meta.unbox(init())
    else:
        sd = {k: v.detach().float().cpu().numpy() for k, v in torch_model.state_dict().items()}
        params = load_params(
            transformer_rules(cfg), ArraySource(sd), flat_shapes(abstract), dtype=dtype
        )
        params = jax.device_put(params)

    jx = [jnp.asarray(a) for a in (x, txt, pooled)]
    ids = [jnp.asarray(img_ids), jnp.asarray(txt_ids)]
    g = jnp.asarray(guidance)
    t = jnp.full((batch,), 0.5, jnp.float32)

    def apply(p, lat, sigma):
        return module.apply({"params": p}, lat, jx[1], jx[2], sigma, ids[0], ids[1], g)

    fwd = jax.jit(apply)

    @jax.jit
    def rollout(p, lat):
        def step(z, s):
            v = apply(p, z, jnp.full((batch,), s[0], jnp.float32)).astype(jnp.float32)
            return z + v * (s[1] - s[0]), None

        pairs = jnp.stack([jnp.asarray(sigmas[:-1]), jnp.asarray(sigmas[1:])], -1)
        return jax.lax.scan(step, lat, pairs)[0]

    fwd_bwd = jax.jit(
        jax.value_and_grad(
            lambda p, lat: jnp.mean(jnp.square(apply(p, lat, t).astype(jnp.float32)))
        )
    )

    case = Case(
        jax_forward=lambda: fwd(params, jx[0], t),
        jax_rollout=lambda: rollout(params, jx[0]),
        jax_fwd_bwd=lambda: fwd_bwd(params, jx[0]),
        torch_forward=None,
        torch_rollout=None,
        torch_fwd_bwd=None,
        forward_flops=flux_forward_flops(cfg, batch, n_img, n_txt),
        description=f"FLUX.1 {size}: inner {cfg.inner_dim}, {cfg.num_layers}+{cfg.num_single_layers} blocks, "
        f"{n_img}+{n_txt} tokens, batch {batch}, {dtype}",
    )
    if with_torch:
        tt = lambda a: torch.from_numpy(a).to(dev, tdtype)
        targs = dict(encoder_hidden_states=tt(txt), pooled_projections=tt(pooled), img_ids=tt(img_ids),
                     txt_ids=tt(txt_ids), guidance=tt(guidance))  # fmt: skip

        def t_forward(lat=None, sigma=0.5):
            lat = tt(x) if lat is None else lat
            with torch.no_grad():
                return torch_model(
                    hidden_states=lat,
                    timestep=torch.full((batch,), sigma, device=dev, dtype=tdtype),
                    **targs,
                ).sample

        def t_rollout():
            lat = tt(x)
            for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
                lat = lat + t_forward(lat, float(s)) * float(s_next - s)
            return lat

        def t_fwd_bwd():
            torch_model.zero_grad(set_to_none=True)
            out = torch_model(
                hidden_states=tt(x),
                timestep=torch.full((batch,), 0.5, device=dev, dtype=tdtype),
                **targs,
            ).sample
            loss = out.float().square().mean()
            loss.backward()
            return loss

        case.torch_forward, case.torch_rollout, case.torch_fwd_bwd = t_forward, t_rollout, t_fwd_bwd
    return case


QWEN_SIZES = {
    "tiny": dict(
        transformer=dict(num_layers=2, attention_head_dim=16, num_attention_heads=2,
                         joint_attention_dim=32, axes_dims_rope=(4, 6, 6)),
        image=64, text_len=16,
    ),
    "small": dict(
        transformer=dict(num_layers=4, attention_head_dim=64, num_attention_heads=4,
                         joint_attention_dim=256, axes_dims_rope=(16, 24, 24)),
        image=256, text_len=64,
    ),
    # Qwen-Image (20B): 60 dual-stream blocks, 24 x 128 heads, Qwen2.5-VL 3584.
    "dev": dict(transformer=dict(), image=1024, text_len=512),
}  # fmt: skip


def build_qwen_image(
    size: str, batch: int, steps: int, dtype: str, attention: str, remat: str, with_torch: bool
) -> Case:
    """Qwen-Image transformer (`QwenImageTransformer2DModel`): packed latents of a
    size x size image (VAE factor 8, 2x2 patches), text with a mask (the last quarter of
    the tokens padded), timestep = sigma as the pipeline passes it."""
    import torch

    from ffjax.models.qwen_image.config import QwenImageTransformerConfig
    from ffjax.models.qwen_image.convert import transformer_rules
    from ffjax.models.qwen_image.transformer import init_shapes, rope_ids
    from ffjax.models.weights import ArraySource, flat_shapes, load_params

    spec = QWEN_SIZES[size]
    diff_cfg = dict(in_channels=64, out_channels=16, **spec["transformer"])
    cfg = QwenImageTransformerConfig(
        **diff_cfg, dtype=dtype, param_dtype=dtype, attention=attention, remat=remat
    )
    side = spec["image"] // 16
    n_img, n_txt = side * side, spec["text_len"]
    dev = "cuda" if jax.default_backend() == "gpu" else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, n_img, cfg.in_channels)).astype(np.float32)
    txt = rng.normal(size=(batch, n_txt, cfg.joint_attention_dim)).astype(np.float32)
    mask = np.ones((batch, n_txt), bool)
    mask[:, n_txt - n_txt // 4 :] = False
    img_shapes = [[(1, side, side)]] * batch
    img_ids, txt_ids = rope_ids(img_shapes, n_txt)
    sigmas = np.linspace(1.0, 0.0, steps + 1, dtype=np.float32)

    torch_model = None
    if with_torch or size != "dev":
        from diffusers import QwenImageTransformer2DModel

        torch.manual_seed(0)
        with torch.device(dev):
            torch_model = QwenImageTransformer2DModel(**diff_cfg).eval()
            if tdtype != torch.float32:
                torch_model = torch_model.to(tdtype)
    module, abstract = init_shapes(cfg)
    jx, jt, jm = (jnp.asarray(a) for a in (x, txt, mask))
    ids = (jnp.asarray(img_ids), jnp.asarray(txt_ids))
    if size == "dev":  # random init on device; 20B params are never built on the host
        from flax.core import meta

        init = jax.jit(lambda: module.init(jax.random.key(0), jx, jt, jm,
                                           jnp.full((batch,), 0.5), *ids)["params"])  # fmt: skip
        params = meta.unbox(init())
    else:
        sd = {k: v.detach().float().cpu().numpy() for k, v in torch_model.state_dict().items()}
        params = jax.device_put(
            load_params(transformer_rules(cfg), ArraySource(sd), flat_shapes(abstract), dtype=dtype)
        )

    def apply(p, lat, sigma):
        return module.apply({"params": p}, lat, jt, jm, sigma, *ids)

    t = jnp.full((batch,), 0.5, jnp.float32)
    fwd = jax.jit(apply)

    @jax.jit
    def rollout(p, lat):
        def step(z, s):
            v = apply(p, z, jnp.full((batch,), s[0], jnp.float32)).astype(jnp.float32)
            return z + v * (s[1] - s[0]), None  # patch^2 * out_channels = in_channels

        pairs = jnp.stack([jnp.asarray(sigmas[:-1]), jnp.asarray(sigmas[1:])], -1)
        return jax.lax.scan(step, lat, pairs)[0]

    fwd_bwd = jax.jit(jax.value_and_grad(
        lambda p, lat: jnp.mean(jnp.square(apply(p, lat, t).astype(jnp.float32)))))  # fmt: skip
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract))
    tokens = n_img + n_txt
    # Matmuls over every token plus the joint attention's two L x L products per block.
    flops = 2 * n_params * tokens * batch + 4 * cfg.num_layers * tokens**2 * (
        cfg.num_attention_heads * cfg.attention_head_dim) * batch  # fmt: skip
    case = Case(
        jax_forward=lambda: fwd(params, jx, t),
        jax_rollout=lambda: rollout(params, jx),
        jax_fwd_bwd=lambda: fwd_bwd(params, jx),
        torch_forward=None, torch_rollout=None, torch_fwd_bwd=None,
        forward_flops=float(flops),
        description=f"Qwen-Image {size}: inner {cfg.num_attention_heads * cfg.attention_head_dim},"
        f" {cfg.num_layers} blocks, {n_img}+{n_txt} tokens, batch {batch}, {dtype}",
    )  # fmt: skip
    if with_torch:
        tt = lambda a: torch.from_numpy(a).to(dev, tdtype)
        targs = dict(encoder_hidden_states=tt(txt), img_shapes=img_shapes,
                     encoder_hidden_states_mask=torch.from_numpy(mask).to(dev))  # fmt: skip

        def t_forward(lat=None, sigma=0.5):
            lat = tt(x) if lat is None else lat
            with torch.no_grad():
                return torch_model(hidden_states=lat, timestep=torch.full(
                    (batch,), sigma, device=dev, dtype=tdtype), **targs).sample  # fmt: skip

        def t_rollout():
            lat = tt(x)
            for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
                lat = lat + t_forward(lat, float(s)) * float(s_next - s)
            return lat

        def t_fwd_bwd():
            torch_model.zero_grad(set_to_none=True)
            out = torch_model(hidden_states=tt(x), timestep=torch.full(
                (batch,), 0.5, device=dev, dtype=tdtype), **targs).sample  # fmt: skip
            loss = out.float().square().mean()
            loss.backward()
            return loss

        case.torch_forward, case.torch_rollout, case.torch_fwd_bwd = t_forward, t_rollout, t_fwd_bwd
    return case


# WAN sizes: transformer (WanTransformer3DModel kwargs), the video it denoises (frames,
# height, width; latents are 4x / 8x / 8x smaller, tokens another 2x2), text length,
# and the Wan 2.1 VAE (AutoencoderKLWan kwargs) with the frame size it decodes.
WAN_SIZES = {
    "tiny": dict(
        transformer=dict(num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32,
                         ffn_dim=64, num_layers=2, rope_max_seq_len=32),
        video=(5, 64, 64), text_len=16,
        vae=dict(base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1), vae_frames=(9, 17),
    ),
    "small": dict(
        transformer=dict(num_attention_heads=4, attention_head_dim=64, text_dim=256,
                         ffn_dim=1024, num_layers=4, rope_max_seq_len=64),
        video=(9, 128, 128), text_len=64,
        vae=dict(base_dim=16, num_res_blocks=2), vae_frames=(9, 17),
    ),
    # Wan2.1-T2V-1.3B: 30 blocks, 12 x 128 heads, ffn 8960, UMT5-XXL 4096, 512 text
    # tokens; 81 frames of 480x832; the Wan 2.1 VAE (base_dim 96).
    "dev": dict(
        transformer=dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                         num_layers=30),
        video=(81, 480, 832), text_len=512, vae=dict(), vae_frames=(17, 81),
    ),
}  # fmt: skip


def _compiled(fn, *args) -> tuple[Callable[[], object], dict]:
    """A call of `jax.jit(fn)(*args)` that compiles on first use, keeping the executable
    (for `memory_analysis`) in the returned dict. An argument that is a `_Lazy` is
    computed on that first use too (so its compile is not counted in another row)."""
    held = {}

    def compile():
        if "exe" not in held:
            held["args"] = [a() if isinstance(a, _Lazy) else a for a in args]
            held["exe"] = jax.jit(fn).lower(*held["args"]).compile()
        return held["exe"]

    def call():
        return compile()(*held["args"])

    call.compile = compile  # for --compile-only
    return call, held


class _Lazy:
    """A zero-argument callable standing for its (cached) result in `_compiled`'s args."""

    def __init__(self, fn: Callable[[], object]):
        self.fn, self.value = fn, None

    def __call__(self):
        if self.value is None:
            self.value = self.fn()
        return self.value


def _to_device(tree: dict) -> dict:
    """`jax.device_put` leaf by leaf, in place, so each host copy is dropped as it goes
    (dev: the transformer is 5.7 GB in float32; whole-tree device_put holds it twice)."""
    for k, v in tree.items():
        tree[k] = _to_device(v) if isinstance(v, dict) else jax.device_put(v)
    return tree


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def wan_step_flops(cfg, batch: int, n_tok: int, n_txt: int, with_kv: bool) -> float:
    """Matmul FLOPs of one WAN transformer step (2 per multiply-add; norms ignored).
    `with_kv`: the text embedder and the cross-attention K/V projections are not run."""
    d, f, L, S = cfg.inner_dim, cfg.ffn_dim, n_tok, n_txt
    block = 2 * L * d * 4 * d + 4 * L * L * d  # self-attention q k v o, q k^T and p v
    block += 2 * L * d * 2 * d + 4 * L * S * d + 2 * L * d * f * 2  # cross q o, attention, MLP
    context = 0 if with_kv else cfg.num_layers * 2 * S * d * 2 * d + 2 * S * (cfg.text_dim + d) * d
    return float(batch * (cfg.num_layers * block + context))


def build_wan(
    size: str, batch: int, steps: int, dtype: str, attention: str, remat: str, with_torch: bool,
    video: tuple[int, int, int] | None = None, vae_frames: tuple[int, ...] | None = None,
    layers: int | None = None, text_len: int | None = None,
) -> Case:  # fmt: skip
    """Wan 2.1 T2V transformer (`WanTransformer3DModel`) and VAE (`AutoencoderKLWan`).

    Rows: one denoising step (text states -> K/V inside the step, as Diffusers runs
    every step), the same step with `kv=` from `context_kv` (the rollout path: K/V
    once per rollout), the `context_kv` call itself, and a VAE decode at each of
    `vae_frames`, with the compiled decode's memory per frame count. Weights: the
    Diffusers model is built with random init and loaded into ffjax through the
    converter (tiny / small from a saved folder; dev from its state dict, to keep one
    copy on disk less), so both sides compute the same function and the printed
    differences check it.
    """
    import tempfile

    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from ffjax.models.wan.convert import load_transformer, load_vae
    from ffjax.models.weights import ArraySource

    spec = WAN_SIZES[size]
    diff_cfg = dict(spec["transformer"], **({} if layers is None else {"num_layers": layers}))
    n_frames, height, width = video or spec["video"]
    n_txt = text_len or spec["text_len"]
    dev = "cuda" if jax.default_backend() == "gpu" else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    tmp = tempfile.TemporaryDirectory(prefix="ffjax_bench_wan_")
    folder = os.path.join(tmp.name, "transformer")

    torch.manual_seed(0)
    with torch.device(dev):
        tmodel = WanTransformer3DModel(**diff_cfg).eval()
    if size == "dev":  # config.json only; the tensors from the state dict (no 5 GB file)
        tmodel.save_config(folder)
        sd = {k: v.detach().float().cpu().numpy() for k, v in tmodel.state_dict().items()}
        module, params = load_transformer(
            folder, dtype, ArraySource(sd), attention=attention, remat=remat
        )
        del sd
    else:
        tmodel.save_pretrained(folder)
        module, params = load_transformer(folder, dtype, attention=attention, remat=remat)
    params = _to_device(params)
    if not with_torch:
        tmodel = None  # (dev: 5 GB)
    elif tdtype != torch.float32:
        tmodel = tmodel.to(tdtype)
    cfg = module.config

    lat = ((n_frames - 1) // 4 + 1, height // 8, width // 8)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *lat, cfg.in_channels)).astype(np.float32)  # channels-last
    ctx = rng.normal(size=(batch, n_txt, cfg.text_dim)).astype(np.float32)
    t = np.full((batch,), 500.0, np.float32)  # sigma 0.5, in WAN's 0..1000 units
    n_tok = lat[0] * (lat[1] // 2) * (lat[2] // 2)
    jx, jc, jt = (jnp.asarray(a) for a in (x, ctx, t))

    def step(p, z, ts, c):
        return module.apply({"params": p}, z, ts, c)

    def kv_of(p, c):
        return module.apply({"params": p}, c, method="context_kv")

    def step_kv(p, z, ts, kv):
        return module.apply({"params": p}, z, ts, None, kv=kv)

    j_step, step_exe = _compiled(step, params, jx, jt, jc)
    j_kv, _ = _compiled(kv_of, params, jc)
    j_step_kv, step_kv_exe = _compiled(step_kv, params, jx, jt, _Lazy(j_kv))

    # The VAE: Wan 2.1 layout, decode of raw latents of a vae_frames-frame video.
    vae_frames = tuple(spec["vae_frames"] if vae_frames is None else vae_frames)
    vae_desc, decoders, zs, tvae = "no VAE", {}, {}, None
    if vae_frames:
        torch.manual_seed(1)
        tvae = AutoencoderKLWan(**spec["vae"]).eval()
        tvae.save_pretrained(os.path.join(tmp.name, "vae"))
        vmodule, vparams = load_vae(os.path.join(tmp.name, "vae"), dtype)
        vparams = jax.device_put(vparams)
        tvae = tvae.to(dev) if with_torch else None  # (random init on the host)
        if tvae is not None and tdtype != torch.float32:
            tvae = tvae.to(tdtype)
        vc = vmodule.config
        zs = {n: rng.normal(size=(batch, (n - 1) // vc.temporal_factor + 1, height // vc.spatial_factor,
                                  width // vc.spatial_factor, vc.z_dim)).astype(np.float32)
              for n in vae_frames}  # fmt: skip

        def decode(p, z):
            return vmodule.apply({"params": p}, z, method="decode")

        decoders = {n: _compiled(decode, vparams, jnp.asarray(z)) for n, z in zs.items()}
        n_vae = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(vparams))
        vae_desc = f"VAE base_dim {vmodule.config.base_dim}, {_count(n_vae)} params"
    tmp.cleanup()

    outputs = {}  # the last PyTorch outputs, to compare with ffjax's
    t_step = None
    t_decode = dict.fromkeys(vae_frames)
    if with_torch:
        tt = lambda a: torch.from_numpy(a).to(dev, tdtype)
        tx, tc, tts = tt(x.transpose(0, 4, 1, 2, 3)), tt(ctx), tt(t)  # channels-first

        def t_step():
            with torch.no_grad():
                outputs["step"] = tmodel(
                    hidden_states=tx, timestep=tts, encoder_hidden_states=tc
                ).sample
            return outputs["step"]

        def decoder(n):
            z = tt(zs[n].transpose(0, 4, 1, 2, 3))

            def call():
                with torch.no_grad():
                    outputs[n] = tvae.decode(z).sample
                return outputs[n]

            return call

        t_decode = {n: decoder(n) for n in vae_frames}

    # Diffusers has no K/V cache: its column in the kv= row is the same full step (timed
    # once, for both rows).
    rows = [
        ("transformer step", j_step, t_step, wan_step_flops(cfg, batch, n_tok, n_txt, False)),
        ("context_kv (once per rollout)", j_kv, None, 0.0),
        ("transformer step, kv= (rollout path)", j_step_kv, t_step,
         wan_step_flops(cfg, batch, n_tok, n_txt, True)),
        *[(f"VAE decode {n} frames", decoders[n][0], t_decode[n], 0.0) for n in vae_frames],
    ]  # fmt: skip

    def notes() -> list[str]:
        out = []
        mem = lambda held: held["exe"].memory_analysis()
        for n in vae_frames:
            m = mem(decoders[n][1])
            out.append(f"VAE decode {n} frames, compiled: temp {_mib(m.temp_size_in_bytes)},"
                       f" args {_mib(m.argument_size_in_bytes)}, output {_mib(m.output_size_in_bytes)}")  # fmt: skip
        for name, held in (("transformer step", step_exe), ("step, kv=", step_kv_exe)):
            m = mem(held)
            out.append(f"{name}, compiled: temp {_mib(m.temp_size_in_bytes)},"
                       f" args {_mib(m.argument_size_in_bytes)}")  # fmt: skip
        if outputs:
            as_np = lambda a: a.float().cpu().numpy()
            ref = as_np(outputs["step"]).transpose(0, 2, 3, 4, 1)
            errs = [
                f"step {_rel_err(j_step(), ref):.1e}",
                f"kv= step {_rel_err(j_step_kv(), ref):.1e}",
            ]
            errs += [f"decode {n} frames {_rel_err(decoders[n][0](), as_np(outputs[n]).transpose(0, 2, 3, 4, 1)):.1e}"
                     for n in vae_frames if n in outputs]  # fmt: skip
            out.append("max |ffjax - PyTorch| / max |PyTorch|: " + ", ".join(errs))
        return out

    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    return Case(
        jax_forward=j_step, jax_rollout=None, jax_fwd_bwd=None,
        torch_forward=None, torch_rollout=None, torch_fwd_bwd=None,
        forward_flops=rows[0][3], rows=rows, notes=notes,
        description=f"WAN 2.1 T2V {size}: inner {cfg.inner_dim}, {cfg.num_layers} blocks, ffn"
        f" {cfg.ffn_dim}, {_count(n_params)} params; video {n_frames}x{height}x{width} ="
        f" latents {lat[0]}x{lat[1]}x{lat[2]} = {n_tok} tokens + {n_txt} text; {vae_desc};"
        f" batch {batch}, {dtype}",
    )  # fmt: skip


FAMILIES = {"flux": build_flux, "qwen_image": build_qwen_image, "wan": build_wan}


def _sync(out):
    """Waits for `out` (a JAX pytree or a torch tensor) to be computed."""
    if "torch" in type(out).__module__:
        import torch

        if out.is_cuda:
            torch.cuda.synchronize()
    else:
        jax.block_until_ready(out)
    return out


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first call seconds incl. compile, median of `repeats` further calls)."""
    t0 = time.perf_counter()
    _sync(fn())
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _sync(fn())
        runs.append(time.perf_counter() - t0)
    return first, statistics.median(runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="flux", choices=sorted(FAMILIES))
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "dev"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=4, help="rollout steps")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn", "splash"])
    p.add_argument("--remat", default="none", choices=["none", "full", "save_dots"])
    p.add_argument("--no-torch", action="store_true", help="time ffjax only")
    p.add_argument("--skip-backward", action="store_true",
                   help="no forward+backward row (two FLUX.1-dev gradients exceed 80 GB)")  # fmt: skip
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 peak for MFU if not in PEAK_BF16"
    )
    # WAN only (other families fix their inputs per size):
    p.add_argument("--video", type=int, nargs=3, metavar=("FRAMES", "HEIGHT", "WIDTH"),
                   help="wan: the video the transformer denoises and the VAE decodes")  # fmt: skip
    p.add_argument("--vae-frames", type=int, nargs="*",
                   help="wan: decode frame counts (1 + 4k); none given: no VAE rows")  # fmt: skip
    p.add_argument("--layers", type=int, help="wan: transformer blocks instead of the size's")
    p.add_argument("--text-len", type=int, help="wan: text tokens instead of the size's")
    p.add_argument("--compile-only", action="store_true",
                   help="wan: compile each row and print compiled memory; run nothing")  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"],
                   help="JAX platform (and torch device); auto: JAX's default")  # fmt: skip
    args = p.parse_args(argv)
    wan_only = dict(video=args.video, vae_frames=args.vae_frames, layers=args.layers,
                    text_len=args.text_len)  # fmt: skip
    given = [k for k, v in wan_only.items() if v is not None]
    if args.compile_only:
        given.append("compile_only")
    if args.family != "wan" and given:
        p.error(f"--{given[0].replace('_', '-')} is for --family wan only")
    if args.device != "auto":
        jax.config.update("jax_platforms", {"cpu": "cpu", "gpu": "cuda"}[args.device])

    import diffusers
    import flax
    import torch

    if args.torch_threads:
        # On a small shared CPU, torch's spinning OpenMP threads can lose 100x to
        # oversubscription; pinning the count makes the comparison meaningful.
        torch.set_num_threads(args.torch_threads)
    extra = {k: v for k, v in wan_only.items() if v is not None}
    case = FAMILIES[args.family](
        args.size, args.batch, args.steps, args.dtype, args.attention, args.remat,
        not args.no_torch, **extra,
    )  # fmt: skip
    device = jax.devices()[0]
    print(f"# {case.description}")
    print(f"# device: {device.device_kind} ({jax.default_backend()}), {os.cpu_count()} CPU cores; "
          f"torch threads {torch.get_num_threads()}; jax {jax.__version__}, flax {flax.__version__}, torch {torch.__version__}, diffusers {diffusers.__version__}")  # fmt: skip
    if args.compile_only:
        print("\n| compile | seconds |\n|---|---|")
        for name, jfn, _, _ in case.rows or []:
            t0 = time.perf_counter()
            jfn.compile()
            print(f"| {name} | {time.perf_counter() - t0:.2f} |")
        notes = case.notes() if case.notes else []
        print("\n" + "\n".join(notes) if notes else "")
        return 0
    print("\n| measurement | ffjax compile+1st (s) | ffjax (ms) | PyTorch (ms) | PyTorch / ffjax |")
    print("|---|---|---|---|---|")
    results, torch_ms = {}, {}
    for name, jfn, tfn, flops in case.rows or [
        ("forward", case.jax_forward, case.torch_forward, case.forward_flops),
        (
            f"rollout {args.steps} steps",
            case.jax_rollout,
            case.torch_rollout,
            args.steps * case.forward_flops,
        ),
        ("forward+backward", case.jax_fwd_bwd, case.torch_fwd_bwd, 3 * case.forward_flops),
    ]:
        if args.skip_backward and name == "forward+backward":
            continue
        first, jt = timed(jfn, args.repeats)
        if tfn is not None and tfn not in torch_ms:  # a PyTorch call in two rows runs once
            torch_ms[tfn] = timed(tfn, args.repeats)[1]
        tt = torch_ms.get(tfn, float("nan"))
        if flops:
            results[name] = (jt, flops)
        print(f"| {name} | {first:.2f} | {jt * 1e3:.2f} | {tt * 1e3:.2f} | {tt / jt:.2f} |")
    notes = case.notes() if case.notes else []
    if notes:
        print("\n" + "\n".join(notes))

    if jax.default_backend() != "cpu":
        peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
            (v for k, v in PEAK_BF16.items() if k in device.device_kind), None)  # fmt: skip
        if peak is None:
            print("\nMFU: unknown device peak; pass --peak-tflops")
        else:
            print(
                f"\nMFU vs {peak / 1e12:.0f} TFLOP/s bf16 peak (model FLOPs; remat recompute not counted):"
            )
            for name, (jt, flops) in results.items():
                print(
                    f"  {name}: {flops / jt / 1e12:.1f} TFLOP/s = {100 * flops / jt / peak:.1f}% MFU"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
