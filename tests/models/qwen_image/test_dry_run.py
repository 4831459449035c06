"""The qwen-image adapter's abstract (config-files-only) setup for `--dry_run`: shapes
and dtypes equal what `load` / `encode_prompts` give, and a dry run plans and compiles."""

import importlib.util
from pathlib import Path

import jax
import pytest

from ffjax import dry_run
from ffjax.models.qwen_image import QwenImageAdapter

RECIPE = Path(__file__).resolve().parents[3] / "configs" / "qwen_image_grpo.py"


def _tiny_config(folder, data):
    spec = importlib.util.spec_from_file_location("qwen_image_grpo", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tiny")
    c.model.path, c.data.path = folder, str(data)
    return c


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_pipelines):
    root = tmp_path_factory.mktemp("qwen_dry_run")
    data = root / "prompts"
    data.mkdir()
    (data / "train.txt").write_text("a red cat\na dog on a mat\n")
    return _tiny_config(tiny_pipelines.qwen_image(), data)  # the session's: read-only


def _shapes(tree):
    return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)


@pytest.mark.slow
def test_abstract_load_matches_load(tiny):
    adapter, weights = QwenImageAdapter.load(tiny)
    abstract, abstract_weights = QwenImageAdapter.abstract_load(tiny)
    assert _shapes(abstract_weights) == _shapes(weights)
    text = QwenImageAdapter.abstract_text_encoders(tiny)
    assert _shapes(list(text.values())[0]) == _shapes(adapter.text.params)
    m = tiny.model
    cond = adapter.encode_prompts(["a red cat", "a dog on a mat"], m.height, m.width)
    assert cond.cfg and abstract.do_cfg
    # Prompts this short fill one padding bucket: the longest text is max_sequence_length.
    assert cond.prompt_embeds.shape[1] == m.max_sequence_length
    assert _shapes(abstract.abstract_cond(2, m.height, m.width)) == _shapes(cond)


@pytest.mark.slow
def test_dry_run_plans_and_compiles(tiny):
    report = dry_run.plan(tiny)
    assert set(report.programs) >= {"train"}
    assert "qwen-image" in report.text(None)
