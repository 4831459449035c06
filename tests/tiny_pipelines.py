"""The tiny FLUX / Qwen-Image / WAN pipeline folders, each built once per pytest session.

`tests/conftest.py` hands one `TinyPipelines` to every test as the session fixture
`tiny_pipelines`. The folders are shared by every test that asks for them: treat them
as read-only (copy a folder before damaging it). The Diffusers pipeline objects are
shared too; a test that patches one (a recording scheduler step, hooks) restores it.
"""

from __future__ import annotations

import os

from tests.tiny_flux_pipeline import build_flux_pipeline
from tests.tiny_qwen_image_pipeline import build_qwen_image_pipeline
from tests.tiny_wan_i2v_pipeline import build_wan_i2v_pipeline
from tests.tiny_wan_pipeline import build_wan_pipeline


class TinyPipelines:
    """Builds each tiny pipeline on first use under `root` (seed 0) and keeps it."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self._built: dict[str, object] = {}

    def _once(self, name: str, build):
        if name not in self._built:
            self._built[name] = build(os.path.join(self.root, name))
        return self._built[name]

    def flux(self) -> str:
        """The FluxPipeline folder of tests/tiny_flux_pipeline.py."""
        return self._once("flux", build_flux_pipeline)

    def qwen_image(self) -> str:
        """The QwenImagePipeline folder of tests/tiny_qwen_image_pipeline.py."""
        return self._once("qwen_image", build_qwen_image_pipeline)

    def wan(self, variant: str = "t2v") -> tuple[str, object]:
        """(folder, WanPipeline) of tests/tiny_wan_pipeline.py's `variant`."""
        return self._once(f"wan_{variant}", lambda p: build_wan_pipeline(p, variant))

    def wan_i2v(self, variant: str = "i2v") -> tuple[str, object]:
        """(folder, WanImageToVideoPipeline) of tests/tiny_wan_i2v_pipeline.py's `variant`."""
        return self._once(f"wan_i2v_{variant}", lambda p: build_wan_i2v_pipeline(p, variant))
