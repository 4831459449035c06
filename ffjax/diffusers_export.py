"""Export trained weights to Diffusers: PEFT-LoRA safetensors files or transformer folders.

The library of `python -m ffjax.export` (`ffjax.cli.export`):

    python -m ffjax.export --workdir RUN_DIR [--epoch N] [--weights ema|current] --out PATH

Runs of the families in `FAMILIES` export (FLUX.1 `flux1`, Qwen-Image `qwen-image`, WAN
`wan2-t2v` / `wan2-i2v`); any other `model.name` is an error naming those. A LoRA run
(train.lora_rank > 0) becomes one safetensors file that the family's pipeline takes with
`load_lora_weights(PATH)` (`FluxPipeline`, `QwenImagePipeline`, `WanPipeline`,
`WanImageToVideoPipeline`): `transformer.<Diffusers module>.lora_A.weight` [r, in] and
`.lora_B.weight` [out, r] for every adapted Linear. `--out` ending in `.safetensors`
names the file; any other `--out` is a folder that receives
`pytorch_lora_weights.safetensors` (Diffusers' default name, so the folder loads too).
A full fine-tune becomes a Diffusers `transformer/` folder (config.json + safetensors)
for `FluxTransformer2DModel` / `QwenImageTransformer2DModel` /
`WanTransformer3DModel.from_pretrained(PATH)`.

Two experts (Wan 2.2 A14B: the pipeline's model_index.json lists a `transformer_2`):
each expert that carries adapters gets its own file, `transformer` the one above and
`transformer_2` the same name with `_transformer_2` before `.safetensors`
(`pytorch_lora_weights_transformer_2.safetensors` in a folder). Both files use the
`transformer.` key prefix, which is what Diffusers expects for either expert:

    pipe.load_lora_weights(OUT)  # the high-noise expert `transformer`
    pipe.load_lora_weights(OUT, weight_name="pytorch_lora_weights_transformer_2.safetensors",
                           load_into_transformer_2=True)  # the low-noise expert

A LoRA on one expert only (configs/wan_t2v_grpo.py:a14b adapts `transformer`) writes
that expert's file alone. A full fine-tune of two experts writes `OUT/transformer/`
and `OUT/transformer_2/`, the pipeline's own layout
(`WanTransformer3DModel.from_pretrained(OUT, subfolder="transformer_2")`).

The run's `checkpoints/config.txt` says which model it trained (`model.name`, and
`model.path`, whose `transformer/config.json` fixes the layer names; `--model_path`
replaces it when the pipeline moved) and the LoRA rank and alpha. Only the chosen
weights are read from the checkpoint (not the optimizer state). Module names come from
the strict key table of the family's `convert.py`, so an export and a load use the same
names.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from ffjax import registry, run_folder
from ffjax.errors import ModelFolderError, UsageError
from ffjax.models.lora import lora_paths
from ffjax.models.weights import (
    LINEAR,
    Rule,
    flat_params,
    flat_shapes,
    save_safetensors,
)

WEIGHTS = ("ema", "current")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what load_lora_weights(folder) reads
# What an export needs of a run's config: the model, and the scale alpha / r of LoRA.
_RUN_KEYS = ("model.name", "model.path", "train.lora_rank", "train.lora_alpha")


class ExportError(UsageError, RuntimeError):
    """A bad argument, run folder or weight tree (exit 2); the message is the whole story.

    A model folder that is not there is a ModelFolderError, a checkpoint that cannot be
    read a CheckpointError (exit 1, `ffjax.errors`).
    """


@dataclasses.dataclass(frozen=True)
class Family:
    """What an export needs of a model family's transformer (all from its `convert.py`).

    Attributes:
      label: the family's name in messages.
      config: its transformer config class (`from_diffusers(transformer folder)`).
      rules: config -> the strict key table (ours <-> Diffusers names).
      init_shapes: config -> (module, abstract params).
      save_diffusers: the family's `save_diffusers(kind, config, params, out_dir, dtype=)`.
      experts: the pipeline components that can hold a transformer, first the one every
        pipeline has; a run of a pipeline with more than one (model_index.json lists
        them) trains the tree {expert: params} (WAN 2.2 A14B).
    """

    label: str
    config: type
    rules: Callable[[Any], list[Rule]]
    init_shapes: Callable[[Any], tuple[Any, Any]]
    save_diffusers: Callable[..., int]
    experts: tuple[str, ...] = ("transformer",)


def _family(family: registry.ModelFamily, model: registry.ModelEntry) -> Family:
    convert = family.converter_module()
    return Family(model.label, family.config_class("transformer"), convert.transformer_rules,
                  convert.transformer_init_shapes, convert.save_diffusers, family.experts)  # fmt: skip


# model.name (the run's adapter) -> its family: every model of the family table.
FAMILIES: dict[str, Family] = {
    m.name: _family(f, m) for f in registry.FAMILIES.values() for m in f.models
}


def _supported() -> str:
    return ", ".join(f"{f.label} (model.name {n!r})" for n, f in FAMILIES.items())


def family_of(config: Any) -> Family:
    """The `FAMILIES` row whose transformer config class `config` is; ExportError if none."""
    for family in FAMILIES.values():
        if isinstance(config, family.config):
            return family
    raise ExportError(f"no export for a {type(config).__name__}; export supports {_supported()}")


# --------------------------------------------------------------------------- LoRA


def lora_state_dict(
    lora: dict, lora_scale: dict, rules: list[Rule], kernel_shapes: dict[str, tuple[int, ...]],
    *, prefix: str = "transformer", dtype: Any = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Our LoRA collection -> `{"<prefix>.<module>.lora_A.weight": [r, in], ...lora_B: [out, r]}`.

    Args:
      lora, lora_scale: the collections of `ffjax.models.lora.init_lora` ({"a": [..., in,
        r], "b": [..., r, out]} and {"scale": [...]} at each Dense path; `...` is the
        layer axis of a scanned stack).
      rules: the family's key table; an adapter's Diffusers name is that of its kernel's
        row (`dense("double_blocks/attn/to_q", "transformer_blocks.{i}.attn.to_q")`),
        one module per layer of a stacked row.
      kernel_shapes: {"path/kernel": shape} of the model, to check every adapter fits.
      dtype: output dtype; None keeps float32.

    PEFT computes y += (lora_alpha / r) B A x and Diffusers, finding no alpha in a
    file, takes lora_alpha = r (scale 1). We fold our scale into B, so any loader gives
    our y += scale (x A) B with its default scale.

    Raises ExportError naming the adapter that has no plain-Linear row in the table
    (a fused or split projection cannot be one PEFT adapter) or does not fit its kernel.
    """
    by_module = {r.ours.removesuffix("/kernel"): r for r in rules if r.ours.endswith("/kernel")}
    adapters, scales = flat_params(lora), flat_params(lora_scale)
    out: dict[str, np.ndarray] = {}
    for path in lora_paths(lora):
        rule = by_module.get(path)
        if rule is None:
            raise ExportError(f"LoRA adapter {path!r} has no Dense kernel in the key table")
        if rule.transform is not LINEAR or not rule.theirs.endswith(".weight"):
            raise ExportError(
                f"LoRA adapter {path!r}: its kernel maps to {rule.theirs!r} by"
                f" {rule.transform.name}, not to one torch Linear; a fused or split module"
                " cannot be exported as a PEFT adapter"
            )
        if f"{path}/scale" not in scales:
            raise ExportError(f"LoRA adapter {path!r} has no lora_scale entry")
        a, b = (np.asarray(adapters[f"{path}/{n}"], np.float32) for n in "ab")
        scale = np.asarray(scales[f"{path}/scale"], np.float32)
        *lead, n_in, n_out = kernel_shapes[rule.ours]
        r = a.shape[-1]
        if (a.shape, b.shape, scale.shape) != ((*lead, n_in, r), (*lead, r, n_out), tuple(lead)):
            raise ExportError(
                f"LoRA adapter {path!r}: a {a.shape}, b {b.shape}, scale {scale.shape} do not"
                f" fit its kernel {tuple(kernel_shapes[rule.ours])} (a [..., in, r], b [...,"
                " r, out], scale [...])"
            )
        b = b * scale[..., None, None]  # the fold (docstring); float32 before any cast
        module = rule.theirs.removesuffix(".weight")
        layers = [(module.format(i=i), a[i], b[i]) for i in range(rule.layers)]
        for name, a_i, b_i in layers if rule.layers else [(module, a, b)]:
            # torch Linear weights are [out, in]: A (in -> r) is [r, in], B (r -> out) [out, r].
            for kind, w in (("lora_A", a_i.T), ("lora_B", b_i.T)):
                out[f"{prefix}.{name}.{kind}.weight"] = np.ascontiguousarray(
                    w if dtype is None else w.astype(dtype)
                )
    return out


def export_lora(
    lora: dict, lora_scale: dict, out_file: str | os.PathLike, *, config: Any, dtype: Any = None
) -> int:
    """Writes LoRA adapters as a Diffusers/PEFT safetensors file; returns #tensors.

    `config` is the transformer's (a `FAMILIES` config class: it picks the key table,
    and its layer counts fix it); see `lora_state_dict` for the layout and the scale.
    """
    family = family_of(config)
    _, abstract = family.init_shapes(config)
    tensors = lora_state_dict(lora, lora_scale, family.rules(config), flat_shapes(abstract),
                              dtype=dtype)  # fmt: skip
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(out_file, tensors, metadata={"format": "pt", "ffjax_lora_scale": "in lora_B"})
    return len(tensors)


# --------------------------------------------------------------------------- full


def export_full(
    transformer_params: dict, config: Any, out_dir: str | os.PathLike, *, dtype: Any = None
) -> int:
    """Writes full transformer params as a Diffusers folder (the family's `save_diffusers`);
    returns #tensors. `config` is the transformer's (a `FAMILIES` config class).

    Every parameter's shape is checked against `config`'s model first, so a tree of
    another model fails here, naming the parameter, not in the loader.
    """
    family = family_of(config)
    _, abstract = family.init_shapes(config)
    want, got = flat_shapes(abstract), flat_shapes(transformer_params)
    bad = [k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    if bad:
        k = bad[0]
        raise ExportError(
            f"transformer params do not fit the model: {k} is {got.get(k, 'absent')} in the"
            f" params, {want.get(k, 'absent')} in the model"
            + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")
        )
    return family.save_diffusers("transformer", config, transformer_params, out_dir, dtype=dtype)


# --------------------------------------------------------------------------- a run


def _run_config(run_dir: Path) -> dict[str, Any]:
    """{key: value} of `_RUN_KEYS` from the run's resolved config (`key = repr(value)` lines)."""
    for path in (run_dir / "checkpoints" / "config.txt", run_dir / "config.txt"):
        text = run_folder.read_config_text(path)
        if text:
            missing = [k for k in _RUN_KEYS if k not in text]
            if missing:
                raise ExportError(f"{path} has no {', '.join(missing)}: not a run's config")
            return {k: ast.literal_eval(text[k]) for k in _RUN_KEYS}
    raise ExportError(f"no config.txt in {run_dir}/checkpoints: cannot tell which model it trained")


def restore_weights(run_dir: Path, epoch: int | None, which: str | None):
    """(nested NumPy weights, "ema" | "current", checkpoint folder) of a run.

    Only that subtree of the TrainState is read; the choice (`--weights`, default the EMA
    when the checkpoint has one) is `ffjax.run_folder.pick_weights`'.
    """
    try:
        with run_folder.open_checkpoint(run_dir / "checkpoints", epoch) as opened:
            manager, epoch, folder, meta = opened
            meta = dict(meta)
            saved = types.SimpleNamespace(trainable=meta["trainable"], ema=meta.get("ema") or None)
            tree, used = run_folder.pick_weights(None, saved, which)
            key = "ema" if used == "ema" else "trainable"
            item = {key: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)}
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
            restored = manager.restore(
                epoch,
                args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True),
            )
            return restored[key], used, folder
    except run_folder.RunFolderError as e:  # no such epoch, no EMA: a bad argument
        raise ExportError(str(e)) from None


def lora_files(out: str | os.PathLike, experts: tuple[str, ...]) -> dict[str, Path]:
    """{expert: file} `export_run` writes a LoRA to for `--out` (module docstring): the
    first expert's file is `out` (a .safetensors) or `out/pytorch_lora_weights.safetensors`,
    another's the same name with `_<expert>` before the suffix."""
    out = Path(out)
    first = out if out.suffix == ".safetensors" else out / LORA_WEIGHT_NAME
    return {
        name: first if i == 0 else first.with_name(f"{first.stem}_{name}{first.suffix}")
        for i, name in enumerate(experts)
    }


def _pipeline_experts(family: Family, model_dir: Path) -> tuple[str, ...]:
    """The family's experts that the pipeline at `model_dir` has: the first always, any
    other when its model_index.json lists it (A14B `transformer_2`; Wan 2.1 has null)."""
    index = {}
    if (model_dir / "model_index.json").is_file():
        with open(model_dir / "model_index.json") as f:
            index = json.load(f)
    return family.experts[:1] + tuple(
        n for n in family.experts[1:] if (index.get(n) or [None])[0] is not None
    )


def _by_expert(tree: dict, experts: tuple[str, ...], ckpt: str) -> dict[str, dict]:
    """{expert: its subtree} of a checkpoint tree ({expert: ...} for several experts)."""
    if len(experts) == 1:
        return {experts[0]: tree}
    extra = sorted(set(tree) - set(experts))
    if extra:
        raise ExportError(
            f"checkpoint {ckpt} holds {extra[:3]} beside the pipeline's experts"
            f" {list(experts)}: not weights of this two-expert model (pass --model_path)"
        )
    return {n: tree[n] for n in experts if n in tree}


def export_run(
    workdir: str | os.PathLike, out: str | os.PathLike, *, epoch: int | None = None,
    weights: str | None = None, model_path: str | None = None, dtype: str | None = None,
) -> str:  # fmt: skip
    """Exports a run's checkpoint to `out` (module docstring); returns a summary line.

    Raises ExportError for a bad argument, a missing run or checkpoint, or weights that
    do not fit; ModelFolderError / ModelConfigError for the run's model folder (missing,
    or a config.json that does not describe the model); CheckpointError for a checkpoint
    that cannot be read.
    """
    if weights not in (None, *WEIGHTS):
        raise ExportError(f"--weights {weights!r} is not allowed; allowed: {', '.join(WEIGHTS)}")
    try:
        dtype = None if dtype is None else jnp.dtype(dtype)
    except TypeError:
        raise ExportError(f"--dtype {dtype!r} is not a dtype (e.g. float32, bfloat16)") from None
    run_dir = Path(workdir).expanduser().resolve()
    if not run_dir.is_dir():
        raise ExportError(f"run workdir {run_dir} does not exist")
    try:
        run_dir, located = run_folder.locate_checkpoint(run_dir)
    except run_folder.RunFolderError as e:
        raise ExportError(str(e)) from None
    c = _run_config(run_dir)
    family = FAMILIES.get(c["model.name"])
    if family is None:
        raise ExportError(f"export supports {_supported()} runs, not {c['model.name']!r}")
    model_dir = Path(model_path or c["model.path"]).expanduser()
    experts = _pipeline_experts(family, model_dir)
    config = {}
    for name in experts:
        folder = model_dir / name
        if not (folder / "config.json").is_file():
            raise ModelFolderError(
                f"{folder} has no config.json: the run's model is not there (pass --model_path)"
            )
        config[name] = family.config.from_diffusers(folder)
    tree, used, ckpt = restore_weights(run_dir, located if epoch is None else epoch, weights)
    trees = _by_expert(tree, experts, ckpt)
    out = Path(out)
    if c["train.lora_rank"] > 0:
        rank, alpha = c["train.lora_rank"], c["train.lora_alpha"]
        flat = flat_params(tree)
        a_shapes = {p: np.shape(flat[f"{p}/a"]) for p in lora_paths(tree)}
        if {s[-1] for s in a_shapes.values()} != {rank}:
            ranks = sorted({s[-1] for s in a_shapes.values()})
            raise ExportError(f"checkpoint {ckpt} has LoRA rank {ranks}, its config.txt {rank}")
        files, written = lora_files(out, experts), []
        for name, lora in trees.items():
            paths = lora_paths(lora)
            if not paths:
                continue  # an expert without adapters (A14B LoRA on `transformer` alone)
            # The scale init_lora gave every adapter: alpha / r, over the layer axis of A.
            lead = {p: np.shape(flat_params(lora)[f"{p}/a"])[:-2] for p in paths}
            lora_scale = traverse_util.unflatten_dict(
                {f"{p}/scale": np.full(s, alpha / rank, np.float32) for p, s in lead.items()},
                sep="/",
            )
            n = export_lora(lora, lora_scale, files[name], config=config[name], dtype=dtype)
            written.append((name, n // 2, files[name]))
        where = " and ".join(
            f"{file} ({k} on {name})" if len(experts) > 1 else str(file)
            for name, k, file in written
        )
        what = (
            f"{sum(k for _, k, _ in written)} LoRA adapters (rank {rank}, alpha {alpha:g})"
            f" as {where}"
        )
    else:
        if out.suffix == ".safetensors":
            raise ExportError("a full fine-tune exports a Diffusers folder: give --out a folder")
        if len(experts) == 1:
            n = export_full(tree, config[experts[0]], out, dtype=dtype)
            what = f"the transformer ({n} tensors) as the Diffusers folder {out}"
        else:
            missing = [e for e in experts if e not in trees]
            if missing:
                raise ExportError(f"checkpoint {ckpt} has no weights of the expert {missing[0]}")
            n = sum(export_full(trees[e], config[e], out / e, dtype=dtype) for e in experts)
            what = (
                f"the experts {', '.join(experts)} ({n} tensors) as the Diffusers folders"
                f" {', '.join(str(out / e) for e in experts)}"
            )
    return f"exported the {used} weights of {ckpt}: {what}"
