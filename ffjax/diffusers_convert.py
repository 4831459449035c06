"""Convert checkpoints between Diffusers folders and ffjax (Orbax) checkpoints.

The library of `python -m ffjax.convert` (`ffjax.cli.convert`):

    python -m ffjax.convert --model flux1 --from-diffusers /ckpt/FLUX.1-dev --out /ckpt/flux-jax
    python -m ffjax.convert --model flux1 --to-diffusers /ckpt/flux-jax --out /ckpt/FLUX.1-dev-back

`--from-diffusers` takes a pipeline folder (model_index.json; its transformer/ and vae/
are converted) or a single component folder. Each converted component becomes
`OUT/<component>/` holding `config.json` (the Diffusers config) and `params/` (an
Orbax checkpoint of the Flax params). `--to-diffusers` reverses that. A folder that is
not a checkpoint of `--model` is refused with a message naming what does not match
(`ffjax.errors`: UsageError for an unknown `--model`, ModelFolderError / WeightsError /
ModelConfigError for a folder that is not the model's).
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from ffjax import registry
from ffjax.errors import ModelFolderError, UsageError

# --model name (any spelling of a family in the family table) -> the module with identify,
# load_transformer / load_vae and save_diffusers.
CONVERTERS = {s: f.converter for f in registry.FAMILIES.values() for s in f.spellings}
COMPONENTS = ("transformer", "vae")


def _converter(model: str):
    import importlib

    if model not in CONVERTERS:
        raise UsageError(f"--model {model!r} has no converter; known: {sorted(CONVERTERS)}")
    return importlib.import_module(CONVERTERS[model])


def _components(model: str, conv, path: str) -> dict[str, str]:
    """{component: folder} to convert from a Diffusers pipeline or component folder."""
    kind = conv.identify(path)  # raises, naming the mismatch, for a foreign folder
    if kind != "pipeline":
        return {kind: path}
    found = {c: os.path.join(path, c) for c in COMPONENTS if os.path.isdir(os.path.join(path, c))}
    for c, p in found.items():
        if conv.identify(p) != c:
            raise ModelFolderError(f"{p}: expected a {registry.family_of(model).label} {c}")
    return found


def _summary(kind: str, n_tensors: int, params, seconds: float) -> str:
    import jax

    leaves = jax.tree.leaves(params)
    n_params = sum(int(np.prod(a.shape)) for a in leaves)
    dtypes = sorted({str(a.dtype) for a in leaves})
    return f"{kind}: {n_tensors} tensors, {n_params:,} params, dtype {'/'.join(dtypes)}, {seconds:.2f}s"


def from_diffusers(model: str, src: str, out: str, dtype: str | None) -> list[str]:
    """Diffusers folder -> ffjax Orbax checkpoint(s) under `out`; returns summary lines."""
    import orbax.checkpoint as ocp

    from ffjax.models.weights import SafetensorsCheckpoint

    conv = _converter(model)
    lines = []
    for kind, folder in _components(model, conv, src).items():
        t0 = time.perf_counter()
        load = conv.load_transformer if kind == "transformer" else conv.load_vae
        _, params = load(folder, dtype=dtype)
        n_tensors = len(SafetensorsCheckpoint.open(folder, prefix=conv.WEIGHTS_PREFIX).keys())
        dst = os.path.abspath(os.path.join(out, kind))
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.makedirs(dst)
        shutil.copy(os.path.join(folder, "config.json"), os.path.join(dst, "config.json"))
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(dst, "params"), params)
        lines.append(_summary(kind, n_tensors, params, time.perf_counter() - t0))
    if os.path.exists(os.path.join(src, "model_index.json")):
        os.makedirs(out, exist_ok=True)
        shutil.copy(os.path.join(src, "model_index.json"), os.path.join(out, "model_index.json"))
    return lines


def to_diffusers(model: str, src: str, out: str, dtype: str | None) -> list[str]:
    """ffjax checkpoint(s) (as written by `from_diffusers`) -> Diffusers folder(s)."""
    import orbax.checkpoint as ocp

    conv = _converter(model)
    has_config = os.path.exists(os.path.join(src, "config.json"))
    parts = {"": src} if has_config else {c: os.path.join(src, c) for c in COMPONENTS}
    parts = {c: p for c, p in parts.items() if os.path.exists(os.path.join(p, "params"))}
    if not parts:
        raise ModelFolderError(f"{src}: no ffjax checkpoint (config.json + params/) found")
    lines = []
    for sub, folder in parts.items():
        t0 = time.perf_counter()
        kind = conv.identify(folder)
        config = registry.family_of(model).config_class(kind).from_diffusers(folder)
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(os.path.abspath(os.path.join(folder, "params")))
        n = conv.save_diffusers(kind, config, params, os.path.join(out, sub), dtype=dtype)
        lines.append(_summary(kind, n, params, time.perf_counter() - t0))
    if not has_config and os.path.exists(os.path.join(src, "model_index.json")):
        shutil.copy(os.path.join(src, "model_index.json"), os.path.join(out, "model_index.json"))
    return lines
