"""The CUDA path, compiled for NVIDIA GPUs that are not there (`--dry_run_topology h100:N`).

XLA's GPU compiler from JAX's CUDA plugin (the `cuda-compile` extra; CI installs it)
compiles the trainer's own rollout and train step for H100s described by
`ffjax.gpu_targets`, on this CPU-only host (JAX_PLATFORMS=cpu, no GPU touched). The
tiny FLUX.1, Qwen-Image and WAN pipelines stand in for the real ones: the programs are
the same code at toy sizes, so the HLO shows what a GPU would run: cuDNN's fused
attention forward and backward (`model.attention=cudnn`), the collectives FSDP over 8
GPUs implies, bfloat16 matmuls (`model.dtype=bfloat16`). A FLUX.1-dev full fine-tune on
one H100, from its config.json files only, is judged not to fit.

Each (recipe, GPUs) pair is compiled once per module (`_compiled`). On 2 CPU cores one
tiny train step compiles in ~15-30 s, so CI runs FLUX.1's rollout and train step on 8
GPUs and the train steps of Qwen-Image on 1 and WAN on 8; the other pairs are `slow`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ffjax import configs, dry_run, gpu_targets
from ffjax.errors import UsageError
from tests import flux_dev_configs, wan_configs

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = "a red cat\na dog on a mat\ntwo birds\na photo of a fox\n"


def _plugin_installed() -> bool:
    try:
        import jax_plugins.xla_cuda13  # noqa: F401
    except ImportError:
        return False
    return True


needs_plugin = pytest.mark.skipif(
    not _plugin_installed(),
    reason="JAX's CUDA plugin is not installed (pip install -e '.[cuda-compile]'; CI installs it)",
)
# cuDNN's fused attention: "__cudnn$fmhaSoftmax", "...ScaleBiasSoftmax" (masked), and
# their "...Backward".
FMHA = re.compile(r"__cudnn\$fmha\w*Softmax$")
FMHA_BWD = re.compile(r"__cudnn\$fmha\w*SoftmaxBackward$")


def _has_fmha(calls: set[str], backward: bool = False) -> bool:
    return any((FMHA_BWD if backward else FMHA).match(c) for c in calls)


def _recipe(name: str, variant: str = "tiny") -> configs.ConfigDict:
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


RECIPES = {"flux": "flux_grpo", "qwen_image": "qwen_image_grpo", "wan": "wan_t2v_grpo"}


@pytest.fixture(scope="module", autouse=True)
def _no_persistent_cache():
    """The test run's persistent compilation cache (tests/conftest.py) cannot load
    executables compiled for devices that are not there (it warns and recompiles):
    off for this module."""
    import jax

    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", before)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuda_prompts")
    (folder / "train.txt").write_text(PROMPTS)
    return str(folder)


@pytest.fixture(scope="module")
def compiled(tiny_pipelines, prompts, tmp_path_factory):
    """compiled(family, gpus, programs) -> dry_run.Report with HLO, compiled once each."""
    cache: dict = {}
    folders = {"flux": tiny_pipelines.flux, "qwen_image": tiny_pipelines.qwen_image,
               "wan": lambda: _tiny_wan_configs(tmp_path_factory.mktemp("wan_configs"))}  # fmt: skip

    def get(family: str, gpus: int, programs: tuple[str, ...]):
        key = (family, gpus, programs)
        if key not in cache:
            c = _recipe(RECIPES[family])
            c.model.path, c.data.path = folders[family](), prompts
            c.model.attention, c.model.dtype = "cudnn", "bfloat16"
            c.mesh.data, c.mesh.fsdp = 1, gpus
            devices = gpu_targets.devices(gpu_targets.parse(f"h100:{gpus}"))
            cache[key] = dry_run.plan(configs.validate(c), devices, programs=programs,
                                      keep_hlo=True)  # fmt: skip
        return cache[key]

    return get


def _tiny_wan_configs(folder) -> str:
    """Wan2.1's config.json files with a 2-layer, 2 x 16-head transformer. (The tiny
    WanPipeline's heads are 12 wide: cuDNN wants multiples of 8, so it would take XLA's
    attention.) The dry run reads nothing else; the UMT5 and VAE are never compiled."""
    wan_configs.write(folder, "1.3b")
    path = Path(folder) / "transformer" / "config.json"
    tiny = dict(json.loads(path.read_text()), num_attention_heads=2, attention_head_dim=16,
                ffn_dim=64, num_layers=2, freq_dim=32)  # fmt: skip
    path.write_text(json.dumps(tiny))
    return str(folder)


def _custom_calls(hlo: str) -> set[str]:
    return set(re.findall(r'custom_call_target="([^"]+)"', hlo))


def _collectives(hlo: str) -> set[str]:
    ops = r"all-gather|reduce-scatter|all-reduce|all-to-all|collective-permute"
    return set(re.findall(rf"\b({ops})(?:-start)?\(", hlo))


def _fmha_dtypes(hlo: str) -> set[str]:
    """Element types of the fused attention calls' results (the attention output first)."""
    calls = re.findall(r"= \(?(\w+)\[[^\n]*custom-call\([^\n]*__cudnn\$fmha", hlo)
    return set(calls)


def _gemm_dtypes(hlo: str) -> list[str]:
    """Result element types of the matmuls (dots, in Triton GEMM fusions or alone)."""
    return re.findall(r"= (\w+)\[[^\]]*\](?:\{[^}]*\})? dot\(", hlo)


def _check_programs(report, gpus: int, programs) -> None:
    assert report.platform == "gpu" and report.num_devices == gpus
    for key in programs:
        p = report.programs[key]
        assert p.temp is not None and p.argument > 0, p  # the GPU compiler's byte counts
        calls, hlo = _custom_calls(p.hlo), p.hlo
        assert _has_fmha(calls), (key, sorted(calls))
        assert _has_fmha(calls, backward=True) == (key == "train"), (key, sorted(calls))
        # bf16 compute as model.dtype asks: attention and the matmuls take bfloat16.
        assert _fmha_dtypes(hlo) == {"bf16"}, (key, _fmha_dtypes(hlo))
        # (a few float32 ones stay: the timestep embedding's, the loss's.)
        dots = _gemm_dtypes(hlo)
        assert dots.count("bf16") >= 0.8 * len(dots), (key, dots)
        coll = _collectives(hlo)
        if gpus == 1:
            assert not coll, (key, coll)
        else:
            # FSDP: the frozen and trainable weights are split over the 8 GPUs and
            # gathered for use; the train step sums the gradients over the batch split.
            assert "all-gather" in coll, (key, coll)
            if key == "train":
                assert coll & {"reduce-scatter", "all-reduce"}, coll


@needs_plugin
def test_plugin_matches_jaxlib():
    from importlib import metadata

    assert metadata.version("jax-cuda13-plugin") == metadata.version("jaxlib")


@needs_plugin
@pytest.mark.parametrize(
    "family,gpus,programs",
    [
        # Every case is slow (20-50 s of compile each): the fast tier keeps the
        # targets, the cuDNN FLOPs and the error tests below; CI runs all of these.
        pytest.param("flux", 8, ("rollout", "train"), marks=pytest.mark.slow),
        pytest.param("qwen_image", 1, ("train",), marks=pytest.mark.slow),
        pytest.param("wan", 8, ("train",), marks=pytest.mark.slow),
        pytest.param("flux", 1, ("rollout", "train"), marks=pytest.mark.slow),
        pytest.param("qwen_image", 8, ("rollout", "train"), marks=pytest.mark.slow),
        pytest.param("wan", 1, ("rollout", "train"), marks=pytest.mark.slow),
        pytest.param("wan", 8, ("rollout",), marks=pytest.mark.slow),
        pytest.param("qwen_image", 1, ("rollout",), marks=pytest.mark.slow),
    ],
)  # fmt: skip
def test_tiny_recipe_compiles_for_h100(compiled, family, gpus, programs):
    report = compiled(family, gpus, programs)
    _check_programs(report, gpus, programs)
    if gpus > 1:  # the frozen transformer's split leaves are split 8 ways
        frozen = report.resident["transformer (frozen)"][0]
        split = frozen.total - frozen.replicated
        assert split > 0.1 * frozen.total, frozen  # (the LoRA scales, some tiny kernels whole)
        assert frozen.per_device - frozen.replicated == pytest.approx(split / gpus, rel=0.05)
    text = report.text(80)
    assert f"on {gpus} gpu device(s)" in text and "FITS in 80 GiB" in text.splitlines()[-1]


@needs_plugin
def test_cudnn_attention_resolves_from_the_mesh_platform():
    """Under a mesh of compile-only H100s the model layers pick cuDNN (masked too), though
    JAX's default backend is the CPU; without the mesh they fall back to XLA."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ffjax.models import layers

    devices = gpu_targets.devices(gpu_targets.parse("h100:2"))
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    q = jax.ShapeDtypeStruct((2, 128, 2, 64), jnp.bfloat16)
    mask = jax.ShapeDtypeStruct((2, 1, 1, 128), jnp.bool_)
    loss = lambda q, m: layers.dot_product_attention(q, q, q, implementation="auto", mask=m)
    grad = jax.jit(jax.grad(lambda q, m: loss(q, m).astype(jnp.float32).sum()))
    with jax.set_mesh(mesh):
        sharded = jax.ShapeDtypeStruct(q.shape, q.dtype,
                                       sharding=jax.NamedSharding(mesh, jax.P("data")))  # fmt: skip
        hlo = grad.lower(sharded, mask).compile().as_text()
    calls = _custom_calls(hlo)
    assert _has_fmha(calls) and _has_fmha(calls, backward=True), calls
    assert jax.default_backend() == "cpu"
    assert layers.resolve_attention("auto", dtype=jnp.bfloat16, seq_len=128, head_dim=64) == "xla"


@needs_plugin
@pytest.mark.slow
def test_flux1_dev_full_fine_tune_does_not_fit_one_h100(tmp_path, capsys):
    folder = flux_dev_configs.write(tmp_path / "flux1-dev")
    c = _recipe("flux_grpo", "flow_factory")
    c.model.path = c.data.path = str(folder)
    c.rewards.pickscore_rank.args.path = str(folder)  # not read: nothing is scored
    c.model.param_dtype, c.model.remat, c.model.attention = "bfloat16", "full", "cudnn"
    c.data.prompts_per_epoch, c.data.group_size = 1, 2
    c.sampling.batch_size, c.train.micro_batch_size, c.train.grad_accum_steps = 1, 1, 2
    c.train.lora_rank = 0  # full fine-tune: float32 weights + AdamW = 16 bytes/param
    report = dry_run.main(configs.validate(c), topology="h100:1", programs=("rollout",))
    out = capsys.readouterr().out
    assert "on 1 gpu device(s)" in out and "GPU topology h100:1" in out
    peak, _ = report.peak()
    assert peak > 12e9 * 16  # 11.9B trainable float32 parameters, Adam mu and nu
    last = out.strip().splitlines()[-1]
    assert "does NOT fit in 79.14 GiB" in last, last


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name,message",
    [
        ("x100:8", "unknown GPU 'x100'; GPUs: a100, h100, h200, b200"),
        ("h100:0", "the GPU count must be N (GPUs on one host) or MxN"),
        ("h100:2x", "the GPU count must be N (GPUs on one host) or MxN"),
        ("h100", "the GPU count must be N (GPUs on one host) or MxN"),
    ],
)
def test_bad_gpu_topology_is_a_usage_error(name, message):
    with pytest.raises(UsageError) as e:
        gpu_targets.parse(name)
    assert f"--dry_run_topology={name}: " in str(e.value) and message in str(e.value)


def test_gpu_topology_counts_hosts_and_gpus():
    t = gpu_targets.parse("H100:2x8")
    assert (t.target.name, t.hosts, t.gpus_per_host, t.num_devices) == ("h100", 2, 8, 16)
    assert gpu_targets.parse("b200:4").num_devices == 4
    assert gpu_targets.is_gpu_topology("a100:8") and not gpu_targets.is_gpu_topology("v5e:2x4")
    proto = gpu_targets.TARGETS["h100"].target_config((9, 12, 0), (13, 0))
    assert "core_count: 132" in proto and "cuda_compute_capability { major: 9 minor: 0 }" in proto
    assert "dnn_version_info { major: 9 minor: 12 patch: 0 }" in proto


def test_missing_plugin_is_a_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax_plugins.xla_cuda13", None)  # import fails
    with pytest.raises(UsageError, match=r"needs JAX's CUDA plugin, which is not installed"):
        gpu_targets.devices(gpu_targets.parse("h100:1"))


@pytest.mark.parametrize(
    "topology,hide_plugin,message",
    [("x100:8", False, "unknown GPU 'x100'"), ("h100:2x", False, "the GPU count must be"),
     ("h100:8", True, "needs JAX's CUDA plugin, which is not installed")],
)  # fmt: skip
def test_cli_gpu_topology_errors_exit_2_with_one_line(topology, hide_plugin, message):
    hide = "import sys; sys.modules['jax_plugins.xla_cuda13'] = None; " if hide_plugin else ""
    code = hide + "import runpy; runpy.run_module('ffjax.train', run_name='__main__')"
    argv = ["--config", "configs/demo.py", "--dry_run", f"--dry_run_topology={topology}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [x for x in r.stderr.splitlines() if x.startswith("ffjax.train")]
    assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]


@needs_plugin
def test_cudnn_attention_flops_equal_the_xla_attentions():
    """The model FLOPs of cuDNN's fused attention (its own primitives in the jaxpr) are
    those of XLA's two matmuls: forward, and forward + backward (3x)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ffjax import flops

    mesh = jax.sharding.Mesh(np.array(gpu_targets.devices(gpu_targets.parse("h100:1"))), ("d",))
    q = jax.ShapeDtypeStruct((2, 128, 4, 64), jnp.bfloat16)

    def counts(implementation):
        f = lambda q: jax.nn.dot_product_attention(q, q, q, implementation=implementation)
        loss = lambda q: f(q).astype(jnp.float32).sum()
        return flops.count(f, q).flops, flops.count(jax.grad(loss), q).flops

    with jax.set_mesh(mesh):
        cudnn = counts("cudnn")
    xla = counts("xla")
    assert cudnn == xla == (4 * 2 * 4 * 128 * 128 * 64, 3 * 4 * 2 * 4 * 128 * 128 * 64)


@needs_plugin
@pytest.mark.parametrize("name", sorted(gpu_targets.TARGETS))
def test_every_gpu_target_makes_compile_only_devices(name):
    target = gpu_targets.TARGETS[name]
    devices = gpu_targets.devices(gpu_targets.parse(f"{name}:2x4"))  # 2 hosts of 4
    assert len(devices) == 8 and {d.device_kind for d in devices} == {target.description}
    assert sorted({d.process_index for d in devices}) == [0, 1]
