"""Benchmark an ffjax transformer against its Diffusers/PyTorch original, same config.

    python tools/bench.py --family flux --size tiny            # CPU, seconds
    python tools/bench.py --family flux --size small
    python tools/bench.py --family flux --size dev --dtype bfloat16 --attention cudnn \
        --remat full                                           # GPU: FLUX.1-dev dims, MFU
    python tools/bench.py --family qwen_image --size tiny      # Qwen-Image transformer

Times, in one process on one machine: (1) a transformer forward, (2) an N-step Euler
rollout (the sampler's inner loop), (3) forward + backward of a mean-square loss
w.r.t. all parameters. Each is compiled / warmed up first, then timed as the median of
`--repeats` runs; prints a markdown table with PyTorch / ffjax ratios (> 1: ffjax
faster) and, on an accelerator, the model-FLOPs utilisation of ffjax against the
device's bf16 peak. tiny / small copy the PyTorch weights into ffjax through the
converter (same numbers both sides); dev uses random weights on each side (timings
only; 12B parameters are never built on CPU).

Families are rows of FAMILIES, so Qwen-Image and WAN plug in with their own builders.
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


FAMILIES = {"flux": build_flux, "qwen_image": build_qwen_image}


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
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 peak for MFU if not in PEAK_BF16"
    )
    args = p.parse_args(argv)

    import diffusers
    import flax
    import torch

    if args.torch_threads:
        # On a small shared CPU, torch's spinning OpenMP threads can lose 100x to
        # oversubscription; pinning the count makes the comparison meaningful.
        torch.set_num_threads(args.torch_threads)
    case = FAMILIES[args.family](
        args.size, args.batch, args.steps, args.dtype, args.attention, args.remat, not args.no_torch
    )
    device = jax.devices()[0]
    print(f"# {case.description}")
    print(f"# device: {device.device_kind} ({jax.default_backend()}), {os.cpu_count()} CPU cores; "
          f"torch threads {torch.get_num_threads()}; jax {jax.__version__}, flax {flax.__version__}, torch {torch.__version__}, diffusers {diffusers.__version__}")  # fmt: skip
    print("\n| measurement | ffjax compile+1st (s) | ffjax (ms) | PyTorch (ms) | PyTorch / ffjax |")
    print("|---|---|---|---|---|")
    results = {}
    for name, jfn, tfn, flops in [
        ("forward", case.jax_forward, case.torch_forward, case.forward_flops),
        (
            f"rollout {args.steps} steps",
            case.jax_rollout,
            case.torch_rollout,
            args.steps * case.forward_flops,
        ),
        ("forward+backward", case.jax_fwd_bwd, case.torch_fwd_bwd, 3 * case.forward_flops),
    ]:
        first, jt = timed(jfn, args.repeats)
        tt = timed(tfn, args.repeats)[1] if tfn is not None else float("nan")
        results[name] = (jt, flops)
        print(f"| {name} | {first:.2f} | {jt * 1e3:.2f} | {tt * 1e3:.2f} | {tt / jt:.2f} |")

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
