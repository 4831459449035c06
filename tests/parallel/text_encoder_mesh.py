"""Text encoders on one device and sharded on 8-device meshes; prints JSON.

Run by tests/parallel/test_text_encoder_mesh.py in a fresh process with 8 fake CPU
devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python -m tests.parallel.text_encoder_mesh SPEC_JSON

SPEC_JSON: {"encoders": {name: [component, folder]}, "flux": pipeline folder,
"cache": an empty directory}; each encoder folder holds `text_encoder/` and, for umt5
and qwen2_5_vl, `tokenizer/`. Output (last line): {"encoders": {name: {mesh: {...}}},
"prompts": {name: difference}, "flux": {mesh: {...}}, "compiled": {...}} with, per
encoder and mesh, the largest absolute difference to the one-device outputs for params
read straight onto the mesh ("direct") and for host params placed afterwards
("placed"), the bytes of the params on device 0 and in all, those of the largest
parameter, the mesh devices holding it and its partition spec; "compiled": the
per-device argument / temp bytes of a larger encoder's compiled call.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

from ffjax import configs
from ffjax.models import text
from ffjax.models.text import placement
from ffjax.parallel.mesh import make_mesh

MESHES = {"fsdp=8": {"fsdp": 8}, "data=2 x fsdp=4": {"data": 2, "fsdp": 4}}


def mesh_of(sizes):
    m = configs.base_config().mesh
    m.update(sizes)
    return make_mesh(m, jax.devices())


def device0_bytes(tree) -> int:
    dev = jax.devices()[0]
    return sum(
        s.data.nbytes
        for a in jax.tree.leaves(tree)
        for s in a.addressable_shards
        if s.device == dev
    )


def total_bytes(tree) -> int:
    return sum(a.nbytes for a in jax.tree.leaves(tree))


def inputs(module, seed: int = 0):
    rng = np.random.RandomState(seed)
    vocab = module.config.vocab_size
    ids = rng.randint(3, vocab, (3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return ids, mask


def max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)


def encoder_report(component: str, folder: str) -> dict:
    folder = f"{folder}/text_encoder"
    module, ref_params = text.load_pretrained(component, folder)
    ids, mask = inputs(module)
    use_mask = component != "clip_text"  # CLIP's causal mask alone, as FLUX runs it
    mask = mask if use_mask else None
    ref = text._jitted(module)(ref_params, ids, mask)
    out = {}
    for name, sizes in MESHES.items():
        mesh = mesh_of(sizes)
        _, direct = text.load_pretrained(component, folder, mesh=mesh)
        _, host = text.load_pretrained(component, folder, host=True)
        placed = placement.place_params(module, host, mesh)
        run = placement.sharded_apply(module, mesh)
        got_direct, got_placed = run(direct, ids, mask), run(placed, ids, mask)
        biggest = max(jax.tree.leaves(direct), key=lambda a: a.size)
        out[name] = {
            "direct": max_diff(ref, got_direct),
            "placed": max_diff(ref, got_placed),
            "outputs": sorted(ref),
            "out_devices": len(jax.tree.leaves(got_direct)[0].sharding.device_set),
            "same_shardings": all(
                a.sharding == b.sharding
                for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(placed), strict=True)
            ),
            "device0": device0_bytes(direct),
            "total": total_bytes(direct),
            "biggest": [
                biggest.nbytes,
                device0_bytes(biggest),
                len(biggest.sharding.device_set),
                str(biggest.sharding.spec),
            ],
        }
    return out


def prompts_report(component: str, folder: str) -> float:
    """`encode_prompts_wan` / `encode_prompts_qwen_image` with the encoder placed on
    fsdp=8 against unplaced: the largest absolute difference of the embeddings."""
    from ffjax.models.text import encode as E
    from tests.models.text.tiny import CORPUS

    load, run = {
        "umt5": (E.load_wan_text, lambda e, p: E.encode_prompts_wan(e, p, max_sequence_length=24)),
        "qwen2_5_vl": (E.load_qwen_image_text, lambda e, p: E.encode_prompts_qwen_image(e, p)[0]),
    }[component]
    ref = run(load(folder), CORPUS)
    placed = load(folder)
    placed.place(mesh_of(MESHES["fsdp=8"]))
    assert all(len(a.sharding.device_set) == 8 for a in jax.tree.leaves(placed.params))
    return float(np.abs(np.asarray(run(placed, CORPUS)) - np.asarray(ref)).max())


def abstract_shardings_match(c, adapter, mesh) -> bool:
    """Whether the abstract encoders (what `--dry_run` sees, no weights) given the
    shardings of `text_encoder_specs` are sharded as the placed ones are."""
    from ffjax.parallel.sharding import logical_shardings

    abstract, specs = type(adapter).abstract_text_encoders(c), type(adapter).text_encoder_specs(c)
    placed = {"text_encoder (CLIP)": adapter.text.clip.params,
              "text_encoder_2 (T5)": adapter.text.t5.params}  # fmt: skip
    if not sorted(abstract) == sorted(specs) == sorted(placed):
        return False
    same = lambda s, a: s == a.sharding
    return all(
        all(
            jax.tree.leaves(
                jax.tree.map(same, logical_shardings(abstract[k], specs[k], mesh), placed[k])
            )
        )
        for k in placed
    )


def flux_report(folder: str, cache_dir: str) -> dict:
    """The flux1 adapter of the demo pipeline: `place_encoders` then `encode_prompts`,
    against the same adapter unplaced; with an embedding cache, written then read."""
    from ffjax.data.embed_cache import EmbedCache
    from ffjax.models.flux.adapter import Flux1Adapter

    c = configs.base_config()
    c.model.name, c.model.path, c.model.max_sequence_length = "flux1", folder, 16
    c.sampling.guidance_scale = 1.0
    prompts = ["a red circle above a blue square", "two green triangles", "a yellow star"]
    ref_adapter, _ = Flux1Adapter.load(c)
    ref = ref_adapter.encode_prompts(prompts, 32, 32)
    out = {}
    for name, sizes in MESHES.items():
        mesh = mesh_of(sizes)
        adapter, _ = Flux1Adapter.load(c)
        adapter.place_encoders(mesh)
        t5 = adapter.text.t5.params
        first = adapter.encode_prompts(prompts, 32, 32)
        adapter = adapter.replace(embed_cache=EmbedCache(f"{cache_dir}/{name}"))
        written = adapter.encode_prompts(prompts, 32, 32)  # misses: encodes and saves
        read = adapter.encode_prompts(prompts, 32, 32)  # hits
        diff = lambda a, b: float(
            max(np.abs(np.asarray(a.prompt_embeds) - np.asarray(b.prompt_embeds)).max(),
                np.abs(np.asarray(a.pooled_prompt_embeds) - np.asarray(b.pooled_prompt_embeds)).max())
        )  # fmt: skip
        out[name] = {
            "placed": diff(first, ref),
            "cache_written": diff(written, ref),
            "cache_read": diff(read, written),
            "t5_device0": device0_bytes(t5),
            "t5_total": total_bytes(t5),
            "clip_device0": device0_bytes(adapter.text.clip.params),
            "clip_total": total_bytes(adapter.text.clip.params),
            "entries": sum(1 for _ in Path(cache_dir, name).rglob("*.emb")),
            "abstract_shardings_match": abstract_shardings_match(c, adapter, mesh),
        }
    # The unplaced adapter's host params went to the default device once, on first use.
    out["ref_on_device"] = all(
        isinstance(a, jax.Array) for a in jax.tree.leaves(ref_adapter.text.t5.params)
    )
    return out


def compiled_report() -> dict:
    """Per-device bytes of the compiled call of a UMT5 whose weights dwarf its
    activations (8 layers of width 256, 34 MB), params on fsdp=8: arguments, and temp
    (which would hold the gathered weights if XLA gathered them all at once)."""
    import flax.linen as nn

    from ffjax.models.text.t5 import T5Config, T5Encoder

    cfg = T5Config.from_dict(
        dict(model_type="umt5", vocab_size=256, d_model=256, d_kv=32, d_ff=1024, num_layers=8,
             num_heads=8, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
             relative_attention_max_distance=128, layer_norm_epsilon=1e-6),
        umt5=True,
    )  # fmt: skip
    module, ids = T5Encoder(cfg), np.ones((2, 16), np.int32)
    mesh = mesh_of(MESHES["fsdp=8"])
    params = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), ids)["params"]))
    shardings = placement.param_shardings(module, mesh)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          params, shardings)  # fmt: skip
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    ids = jax.ShapeDtypeStruct(ids.shape, ids.dtype, sharding=rep)
    mem = placement.sharded_apply(module, mesh).jitted.lower(params, ids, None).compile()
    mem = mem.memory_analysis()
    return {
        "total": sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(params)),
        "argument": int(mem.argument_size_in_bytes),
        "temp": int(mem.temp_size_in_bytes),
    }


def main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    out = {"encoders": {}, "devices": jax.device_count()}
    for name, (component, folder) in spec["encoders"].items():
        out["encoders"][name] = encoder_report(component, folder)
    out["prompts"] = {
        name: prompts_report(component, folder)
        for name, (component, folder) in spec["encoders"].items()
        if component in ("umt5", "qwen2_5_vl")
    }
    out["flux"] = flux_report(spec["flux"], spec["cache"])
    out["compiled"] = compiled_report()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
