"""`--dry_run` (ffjax/dry_run.py): its byte accounting against the real loaded model and
state, sharding on 8 fake CPU devices, a FLUX.1-dev-sized folder of config.json files
compiled on CPU, and bad input."""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from ffjax import configs, dry_run, trainer
from ffjax import run as run_lib
from tests import flux_dev_configs

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def _demo(variant="grpo", **overrides):
    spec = importlib.util.spec_from_file_location("demo_recipe", ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    return configs.validate(config)


def device0_bytes(tree) -> int:
    """Bytes of the real arrays of `tree` held by device 0 (NumPy arrays count whole)."""
    dev = jax.devices()[0]
    total = 0
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            total += sum(s.data.nbytes for s in leaf.addressable_shards if s.device == dev)
        else:
            total += np.asarray(leaf).nbytes
    return total


def _env(devices=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop(dry_run._REEXEC_MARK, None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


# --------------------------------------------------------------------------- (a)


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full+kl"])
def test_demo_bytes_equal_the_loaded_model_and_state(full):
    over = dict(train__lora_rank=0, algorithm__kl_beta=0.01) if full else {}
    config = _demo(**over)
    report = dry_run.plan(config, compile=False)
    run = trainer.setup(config)  # loads the real demo pipeline and builds the TrainState
    got = {k: b.per_device for k, (b, _) in report.resident.items()}
    kind = "full" if full else f"LoRA r={config.train.lora_rank}"
    want = {
        "vae": device0_bytes(run.weights["vae"]),
        "text_encoder (CLIP)": device0_bytes(run.adapter.text.clip.params),
        "text_encoder_2 (T5)": device0_bytes(run.adapter.text.t5.params),
        f"trainable ({kind})": device0_bytes(run.initial.trainable),
        "optimizer state": device0_bytes(run.initial.opt_state),
        "EMA": device0_bytes(run.initial.ema),
    }
    if full:
        want["reference copy"] = device0_bytes(run.ref)
    else:
        want["transformer (frozen)"] = device0_bytes(run.base)  # params + lora_scale
    assert got == want
    # The loaded transformer itself: same bytes and parameter count as the abstract one.
    # A full fine-tune drops the loaded copy after setup (the trainable float32 one
    # replaces it); the reference copy is that loaded tree.
    loaded = jax.tree.leaves(run.ref if full else run.weights["transformer"])
    assert ("transformer" in run.weights) == (not full)
    key = "reference copy" if full else "transformer (frozen)"
    b = report.resident[key][0]
    lora_scale = 0 if full else device0_bytes(run.base["lora_scale"])
    assert b.total - lora_scale == sum(a.nbytes for a in loaded) > 4_000_000
    assert b.count - lora_scale // 4 == sum(a.size for a in loaded)


@pytest.mark.slow
def test_the_dry_run_lowers_the_programs_the_trainer_runs():
    """The dry run lowers the trainer's own rollout and train step (one builder, no second
    copy): their program text for the abstract run equals that of the trainer's first
    call of each in a real epoch."""
    config = _demo()
    run = run_lib.build(config)
    seen = {}

    class Seen(Exception):  # the first train step is lowered: the epoch need not go on
        pass

    def spy(name, fn):
        def call(*args, **kwargs):
            seen.setdefault(name, fn.lower(*args, **kwargs).as_text())
            if name == "train":
                raise Seen
            return fn(*args, **kwargs)

        return call

    run.gen = dataclasses.replace(run.gen, rollout=spy("rollout", run.gen.rollout))
    run.train_step = spy("train", run.train_step)
    with pytest.raises(Seen):
        trainer.run_epoch(run, run.initial)
    plan = run_lib.build(config, abstract=True)
    lowered = dry_run.lower(plan, dry_run.abstract_epoch(plan), ("rollout", "train"))
    assert set(seen) == set(lowered) == {"rollout", "train"}
    for name, (_, _, program) in lowered.items():
        assert program.as_text() == seen[name], name


@pytest.mark.slow
def test_demo_compiles_and_reports():
    config = _demo()
    report = dry_run.plan(config)
    assert set(report.programs) == {"rollout", "decode", "train"}
    for p in report.programs.values():
        assert p.temp > 0 and p.output > 0 and p.compile_s > 0, p
    # The rollout (the whole epoch in one call here) reads the frozen weights, the LoRA
    # adapters and the epoch's inputs, plus sigmas, noise levels, key and recorded steps:
    # XLA's argument bytes are our own accounting of them.
    res = {k: b.per_device for k, (b, _) in report.resident.items()}
    ours = res["transformer (frozen)"] + res[f"trainable (LoRA r={config.train.lora_rank})"]
    ours += report.epoch["inputs"][0].per_device
    assert 0 <= report.programs["rollout"].argument - ours < 256
    train = report.programs["train"]
    assert train.alias > 0  # the state is donated
    text = report.text(memory_gb=1)
    assert "mesh data=1 fsdp=1 tensor=1 sequence=1 on 1 cpu device(s)" in text
    c = config
    n = c.data.prompts_per_epoch * c.data.group_size
    assert f"train step ({c.train.micro_batch_size} rows)" in text
    assert f"rollout ({c.sampling.batch_size or n} samples x {c.sampling.num_steps} steps)" in text
    assert "FITS in 1 GiB" in text.splitlines()[-1]
    peak, where = report.peak()
    assert (
        peak
        == report.resident_bytes() + report.epoch_bytes(where) + report.programs[where].transient
    )
    assert "does NOT fit in 0.001 GiB" in report.verdict(0.001)


# --------------------------------------------------------------------------- (b)

_EIGHT = textwrap.dedent(
    """
    import dataclasses, json
    import jax
    import jax.numpy as jnp
    import numpy as np
    from ffjax import dry_run, trainer
    from ffjax import run as run_lib
    from ffjax.flow import rollout
    from ffjax.stages import generate, optimize
    from ffjax.parallel import sharding
    from tests.test_dry_run import _demo, device0_bytes

    out = {}
    for name, mesh, devices in (("one", 1, jax.devices()[:1]), ("fsdp8", 8, None)):
        config = _demo(mesh__data=1, mesh__fsdp=mesh)
        report = dry_run.plan(config, devices, compile=False)
        out[name] = {k: dataclasses.asdict(b) for k, (b, _) in report.resident.items()}
        out[name + "_epoch"] = {k: dataclasses.asdict(b) for k, (b, _) in report.epoch.items()}
    run = trainer.setup(config)  # fsdp=8, real arrays on 8 devices
    out["real"] = {
        "transformer (frozen)": device0_bytes(run.base),
        f"trainable (LoRA r={config.train.lora_rank})": device0_bytes(run.initial.trainable),
        "optimizer state": device0_bytes(run.initial.opt_state),
        "EMA": device0_bytes(run.initial.ema),
        "vae": device0_bytes(run.weights["vae"]),
        "text_encoder (CLIP)": device0_bytes(run.adapter.text.clip.params),
        "text_encoder_2 (T5)": device0_bytes(run.adapter.text.t5.params),
    }
    # One epoch's arrays made as trainer.run_epoch makes them (epoch 0).
    c, m, k = run.config, run.config.model, run.config.data.group_size
    n = c.data.prompts_per_epoch * k
    cond = run.adapter.encode_prompts(run.prompts.prompts[: n // k], m.height, m.width)
    cond = jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), cond)
    noise = run.adapter.init_noise(jax.random.key(0), n, m.height, m.width)
    cond, noise = jax.device_put((cond, noise), sharding.batch_shardings((cond, noise), run.mesh))
    sigmas = run.adapter.sigmas(c.sampling.num_steps, m.height, m.width)
    window = rollout.sde_window(c.seed, 0, run_lib.sde_candidates(c), run_lib.sde_count(c))
    levels = rollout.noise_levels_for(c.sampling.num_steps, window, c.sampling.noise_level)
    final, traj, _ = generate.rollout_and_decode(run.gen, run.initial.trainable, cond, noise,
                                                 sigmas, levels, jax.random.key(1), window)
    rows = optimize.make_rows(run.spec.record, traj, np.zeros(n), levels,
                              np.random.default_rng(0), sigmas, c.algorithm, run.train_timesteps)
    out["real_epoch"] = {"inputs": device0_bytes((cond, noise)),
                         "outputs": device0_bytes((final, traj)),
                         "training rows": device0_bytes(rows)}
    print("JSON" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_fsdp8_divides_the_sharded_bytes_by_8_and_matches_the_real_shards():
    r = subprocess.run([sys.executable, "-c", _EIGHT], cwd=ROOT, env=_env(8),
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("JSON", 1)[1])
    one, eight = out["one"], out["fsdp8"]
    lora = next(k for k in eight if k.startswith("trainable (LoRA"))
    for name in ("transformer (frozen)", lora, "optimizer state", "EMA"):
        a, b = one[name], eight[name]
        assert a["per_device"] == a["total"] and b["total"] == a["total"], name
        sharded = b["total"] - b["replicated"]
        assert b["per_device"] == b["replicated"] + sharded // 8, name
        # ~1/8 of the one-device bytes, off by at most the replicated remainder.
        assert a["per_device"] / 8 <= b["per_device"] <= a["per_device"] / 8 + b["replicated"]
        assert out["real"][name] == b["per_device"], name  # the trainer's real shards
    # The kernels shard over fsdp (embed axis); LoRA B [r, out] mostly follows `heads` /
    # `mlp` (the tensor axis), so the adapters stay largely replicated on fsdp alone.
    frozen = eight["transformer (frozen)"]
    assert frozen["replicated"] < 0.2 * frozen["total"]
    assert out["real"]["vae"] == eight["vae"]["per_device"]
    for name in ("text_encoder (CLIP)", "text_encoder_2 (T5)"):  # sharded by place_encoders
        assert eight[name]["total"] == one[name]["total"] == one[name]["per_device"], name
        assert eight[name]["per_device"] < 0.2 * eight[name]["total"], name
        assert out["real"][name] == eight[name]["per_device"], name
    epoch = {k: b["per_device"] for k, b in out["fsdp8_epoch"].items()}
    assert epoch == out["real_epoch"]
    for name in ("inputs", "outputs"):  # split over the batch axes (data, fsdp)
        assert epoch[name] < out["one_epoch"][name]["per_device"] / 4, name
    # The trainer's rows replicate (XLA's reshape of the sharded trajectory).
    assert epoch["training rows"] == out["one_epoch"]["training rows"]["per_device"]


@pytest.mark.slow
def test_cli_dry_run_on_8_fake_devices_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "ffjax.train", "--dry_run", "--dry_run_devices", "8",
         "--config.mesh.data=1", "--config.mesh.fsdp", "8", "--workdir", str(workdir),
         "--dry_run_device_memory_gb", "1"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mesh data=1 fsdp=8 tensor=1 sequence=1 on 8 cpu device(s)" in r.stdout
    assert re.search(r"train step \(\d+ rows\)", r.stdout)
    assert "FITS in 1 GiB" in r.stdout.strip().splitlines()[-1]
    assert not workdir.exists()


def test_backend_started_early_re_executes_with_the_device_count():
    code = (
        "import jax; jax.devices(); from ffjax import dry_run;"
        " dry_run.use_cpu_devices(4, ['-c', 'import jax; print(jax.device_count(),"
        " jax.default_backend())'])"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["4", "cpu"]


# --------------------------------------------------------------------------- (c)

FLUX_DEV_PARAMS = 11_901_408_320  # FluxTransformer2DModel of FLUX.1-dev
T5_XXL_ENCODER_PARAMS = 4_762_310_656  # T5EncoderModel of FLUX.1-dev's text_encoder_2
CLIP_L_TEXT_PARAMS = 123_060_480  # CLIPTextModel of its text_encoder


def _flux_lora_params(rank: int) -> int:
    """rank x (in + out) of every Dense of the FLUX LoRA targets (ffjax.models.lora)."""
    d, mlp = 3072, 4 * 3072
    double = 6 * (d + d) + 2 * (d + d) + 2 * (d + mlp) + 2 * (mlp + d)
    single = 3 * (d + d)
    return rank * (19 * double + 38 * single)


@pytest.mark.slow
def test_flux1_dev_lora_from_config_files_only(tmp_path):
    folder = flux_dev_configs.write(tmp_path / "flux1-dev")
    config = _flux_dev_recipe(folder)
    report = dry_run.plan(config)
    res = {k: b for k, (b, _) in report.resident.items()}
    frozen = res["transformer (frozen)"]
    assert frozen.total == pytest.approx(23.8e9, rel=0.02)  # 11.9B bf16 parameters
    lora = _flux_lora_params(64)
    scales = 19 * 12 + 38 * 3  # float32 lora_scale per adapted Dense per layer
    assert (frozen.count, frozen.total) == (
        FLUX_DEV_PARAMS + scales,
        2 * FLUX_DEV_PARAMS + 4 * scales,
    )
    assert res["trainable (LoRA r=64)"].count == lora and res["EMA"].count == lora
    assert res["trainable (LoRA r=64)"].total == 4 * lora  # float32 master weights
    # Adam mu, nu and MultiSteps' accumulated gradient (grad_accum_steps=2), + counters.
    assert res["optimizer state"].count == pytest.approx(3 * lora, abs=16)
    assert res["text_encoder_2 (T5)"].total == 2 * T5_XXL_ENCODER_PARAMS
    assert res["text_encoder (CLIP)"].total == 2 * CLIP_L_TEXT_PARAMS
    assert res["vae"].count == 83_819_683
    p = report.programs
    assert 0.1 * GIB < p["rollout"].temp < 10 * GIB  # 1 sample, no whole-model f32 copy
    assert 0.5 * GIB < p["train"].temp < 40 * GIB  # 1 row, remat=full
    assert p["rollout"].argument == pytest.approx(frozen.per_device, rel=0.05)
    text = report.text(memory_gb=80)
    assert "11.901B" in text and "4.762B" in text
    assert "FITS in 80 GiB" in text.splitlines()[-1]
    print(text)


def _flux_dev_recipe(folder, **overrides):
    spec = importlib.util.spec_from_file_location("flux_grpo", ROOT / "configs" / "flux_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("flow_factory")
    c.model.path = c.data.path = str(folder)
    c.rewards.pickscore_rank.args.path = str(folder)  # not read: the dry run scores nothing
    c.model.param_dtype = "bfloat16"
    c.model.remat = "full"
    c.data.prompts_per_epoch, c.data.group_size = 1, 2  # 2 samples, 2 rows per epoch
    c.sampling.batch_size = 1
    c.train.micro_batch_size, c.train.grad_accum_steps = 1, 2
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return configs.validate(c)


# --------------------------------------------------------------------------- (d)


def test_mesh_product_not_the_device_count_is_a_config_error():
    config = _demo(mesh__data=2)
    with pytest.raises(configs.ConfigError) as e:
        dry_run.plan(config, compile=False)
    assert "the mesh axes multiply to 2, not the device count" in str(e.value)
    assert "config.mesh.data=2" in str(e.value) and "1 device(s)" in str(e.value)


@pytest.mark.slow
def test_cli_bad_mesh_exits_1_with_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "ffjax.train", "--dry_run", "--dry_run_devices", "4",
         "--config.mesh.data=3"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 1
    assert "ffjax.train: the mesh axes multiply to 3, not the device count" in r.stderr
    assert "on 4 device(s)" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "ffjax.train", "--dry_run_devices", "4"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "need --dry_run" in r.stderr


def test_unknown_dry_run_program_names_the_flag():
    r = subprocess.run(
        [sys.executable, "-m", "ffjax.train", "--dry_run", "--dry_run_programs", "train,backward"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 1 and "--dry_run_programs=train,backward" in r.stderr, r.stderr[-2000:]
    assert "choose one or more of rollout,decode,train" in r.stderr


def test_missing_model_config_names_the_path(tmp_path):
    config = _demo()
    config.model.path = str(tmp_path)
    with pytest.raises(configs.ConfigError) as e:
        dry_run.plan(config, compile=False)
    assert f"config.model.path={tmp_path}" in str(e.value) and "config.json" in str(e.value)


def test_bytes_of_sharded_and_replicated_leaves():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",))
    s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    tree = {"a": jax.ShapeDtypeStruct((8, 3), np.float32, sharding=s),
            "b": jax.ShapeDtypeStruct((5,), jax.numpy.bfloat16)}  # fmt: skip
    b = dry_run.tree_bytes(tree)
    assert dataclasses.astuple(b) == (8 * 3 * 4 + 10, 8 * 3 * 4 + 10, 8 * 3 * 4 + 10, 29, 0)
    # A leaf in pinned host memory counts as host bytes, none on the device.
    tree["a"] = jax.ShapeDtypeStruct((8, 3), np.float32, sharding=s.with_memory_kind("pinned_host"))
    b = dry_run.tree_bytes(tree)
    assert dataclasses.astuple(b) == (10, 8 * 3 * 4 + 10, 10, 29, 8 * 3 * 4)


def test_backend_without_memory_stats_still_gives_a_verdict():
    b = dry_run.Bytes(per_device=3 * GIB, total=3 * GIB)
    report = dry_run.Report(
        "t", {"data": 1}, "cpu", 1, {"weights": (b, "")}, {},
        {"train": dry_run.Program("train step", "1 rows", None, None, None, None, 1.0)}, [],
    )  # fmt: skip
    assert report.peak() == (3 * GIB, None)
    line = report.text(memory_gb=2).splitlines()[-1]
    assert "(no temporaries reported by this backend)" in line and "does NOT fit" in line
    assert "n/a" in report.text()


def test_a_program_xla_cannot_compile_is_one_compile_error(monkeypatch):
    """XLA's compile failure (e.g. the Triton GEMM tiling error of deviceless GPU
    compiles) stops the dry run with one CompileError naming the program and XLA's first
    line, which the CLI prints as one line (exit 1)."""
    from ffjax import errors

    real = dry_run.calls

    class Failing:  # the train step's Call, whose compile fails as XLA's does
        def __init__(self, call):
            self.call = call

        def __getattr__(self, name):
            return getattr(self.call, name)

        def lower(self):
            class Lowered:
                def compile(self, options=None):
                    raise jax.errors.JaxRuntimeError("INTERNAL: no tile sizes\nsecond line")

            return Lowered()

    monkeypatch.setattr(dry_run, "calls", lambda *a, **k: {
        n: Failing(c) if n == "train" else c for n, c in real(*a, **k).items()
    })  # fmt: skip
    with pytest.raises(errors.CompileError) as info:
        dry_run.plan(_demo(), programs=("train",))
    assert str(info.value) == (
        "XLA could not compile the train program for cpu: INTERNAL: no tile sizes"
    )
    assert info.value.exit_code == 1
