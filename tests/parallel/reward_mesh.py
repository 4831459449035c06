"""PickScore on one device and placed on 8-device meshes; prints JSON.

Run by tests/parallel/test_reward_mesh.py in a fresh process with 8 fake CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python -m tests.parallel.reward_mesh FOLDER

FOLDER holds a tiny CLIPModel with its processor. Output: {"1 device": scores,
mesh name: scores, "devices": {mesh name: [devices holding the params, [(rows,
partition spec) of the images of each jitted call]]}}.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from ffjax import configs
from ffjax.parallel.mesh import make_mesh
from ffjax.rewards import clip_family as C
from ffjax.rewards.base import Samples
from tests.models.text.tiny import CORPUS

MESHES = {"data=8": {"data": 8}, "data=4 x fsdp=2": {"data": 4, "fsdp": 2}}


def main(folder: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 40, 36, 3), dtype=np.uint8)  # 11: padded to 16
    samples = Samples([CORPUS[i % 5] for i in range(11)], images=images)
    out = {"1 device": C.PickScore(path=folder)(samples).tolist(), "devices": {}}
    for name, sizes in MESHES.items():
        m = configs.base_config().mesh
        m.update(sizes)
        reward = C.PickScore(path=folder, batch_size=6)  # 6 -> 8 rows per call
        reward.place(make_mesh(m, jax.devices()))
        specs, jitted = [], reward._jit

        def recording(params, frames, *rest, specs=specs, jitted=jitted):
            specs.append((frames.shape[0], str(frames.sharding.spec)))
            return jitted(params, frames, *rest)

        reward._jit = recording
        out[name] = reward(samples).tolist()
        leaf = jax.tree.leaves(reward.params)[0]
        out["devices"][name] = [len(leaf.sharding.device_set), specs]
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
