"""CLIP-family rewards against float64 NumPy references of their definitions.

The references run the real transformers `CLIPModel` in float64 on the real
`CLIPProcessor` (PIL backend) inputs, then apply each published definition in NumPy;
the rewards run our float32 JAX model from the `save_pretrained` folders.
"""

import copy

import numpy as np
import pytest
import torch

from ffjax import registry
from ffjax.models import weights as W
from ffjax.models.clip import aesthetic as A
from ffjax.rewards import clip_family as C
from ffjax.rewards.base import Samples
from tests.models.clip.tiny import CLIP_MODEL_CONFIGS, build_clip
from tests.models.text.tiny import CORPUS, clip_tokenizer

TOL = 1e-5  # max |ours - reference| / max |reference|: float32 model vs float64 reference


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{name: (torch model, model folder, processor folder)}; processor sized to the model."""
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    out = {}
    for i, name in enumerate(CLIP_MODEL_CONFIGS):
        # Seeds with cosines of both signs in the (gelu, 333 x 500) case (see the test).
        model = build_clip(name, seed=570 + i)
        s = model.config.vision_config.image_size
        model_dir, proc_dir = (
            tmp_path_factory.mktemp(f"m_{name}"),
            tmp_path_factory.mktemp(f"p_{name}"),
        )
        model.save_pretrained(model_dir)
        image_proc = CLIPImageProcessorPil(
            size={"shortest_edge": s}, crop_size={"height": s, "width": s}
        )
        CLIPProcessor(
            image_processor=image_proc, tokenizer=clip_tokenizer(proc_dir)
        ).save_pretrained(proc_dir)
        out[name] = (model, model_dir, proc_dir)
    return out


def _samples(n, h, w, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    return Samples(prompts=[CORPUS[(seed + i) % 5] for i in range(n)], images=images)


def _reference_embeddings(model, proc_dir, samples):
    """float64 (image features [B, P], text features [B, P], logit_scale) from transformers."""
    from transformers import CLIPProcessor

    proc = CLIPProcessor.from_pretrained(proc_dir)
    pixels = proc.image_processor(images=list(samples.images), return_tensors="np")["pixel_values"]
    tok = proc.tokenizer(list(samples.prompts), padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt")  # fmt: skip
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        img = m64.get_image_features(pixel_values=torch.tensor(pixels, dtype=torch.float64))
        txt = m64.get_text_features(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        )
    as_np = lambda o: (o if isinstance(o, torch.Tensor) else o.pooler_output).numpy()
    return as_np(img), as_np(txt), float(m64.logit_scale.detach())


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _assert_close(ours, ref):
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    # All-zero references (CLIPScore clamps every negative cosine) must come out as 0.
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-6)
    assert err < TOL, (err, ours, ref)
    return err


@pytest.mark.parametrize("name", list(CLIP_MODEL_CONFIGS))
@pytest.mark.parametrize("n,h,w", [(4, 333, 500), (3, 512, 512)])
def test_clip_score_and_pickscore_match_float64_definitions(folders, name, n, h, w):
    model, model_dir, proc_dir = folders[name]
    samples = _samples(n, h, w, seed=h + n)
    img, txt, log_scale = _reference_embeddings(model, proc_dir, samples)
    cos = _cos(img, txt)
    if (name, h) == ("gelu", 333):  # this case has cosines of both signs: both branches
        assert (cos > 0).any() and (cos < 0).any(), cos
    clip = C.CLIPScore(path=model_dir, processor_path=proc_dir)(samples)
    _assert_close(clip, 2.5 * np.maximum(cos, 0))
    raw = registry.REWARDS.get("clip_score")(
        path=model_dir, processor_path=proc_dir, w=1.0, clamp=False
    )
    _assert_close(raw(samples), cos)  # Flow-Factory's `CLIP` reward: the plain cosine
    pick = registry.REWARDS.get("pickscore")(path=model_dir, processor_path=proc_dir)(samples)
    _assert_close(pick, np.exp(log_scale) * cos / 26.0)


def _random_head(width, seed):
    """A torch module in the published head's exact layout (keys layers.{0,2,4,6,7}.*)."""

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
            )  # fmt: skip

    torch.manual_seed(seed)
    return MLP().eval()


def _mlp64(state, x):
    for i in A.LINEAR_INDICES:  # affine layers only: the published ReLUs are commented out
        x = (
            x @ state[f"layers.{i}.weight"].double().numpy().T
            + state[f"layers.{i}.bias"].double().numpy()
        )
    return x[:, 0]


@pytest.fixture(scope="module")
def heads(folders, tmp_path_factory):
    """{name: (state dict, .pth path, .safetensors path)} sized to each tiny CLIP."""
    out = {}
    for i, (name, (model, _, _)) in enumerate(folders.items()):
        state = _random_head(model.config.projection_dim, seed=i).state_dict()
        d = tmp_path_factory.mktemp(f"head_{name}")
        torch.save(state, d / "sac+logos+ava1-l14-linearMSE.pth")
        W.save_safetensors(d / "head.safetensors", {k: v.numpy() for k, v in state.items()})
        out[name] = (state, d / "sac+logos+ava1-l14-linearMSE.pth", d / "head.safetensors")
    return out


@pytest.mark.parametrize("name", list(CLIP_MODEL_CONFIGS))
def test_aesthetic_matches_float64_definition(folders, heads, name):
    model, model_dir, proc_dir = folders[name]
    state, pth, st = heads[name]
    assert sorted(state) == sorted(
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")
    )
    samples = _samples(3, 768, 512, seed=5)
    img, _, _ = _reference_embeddings(model, proc_dir, samples)
    ref = _mlp64(state, img / np.linalg.norm(img, axis=-1, keepdims=True))
    ours = C.Aesthetic(path=model_dir, head_path=pth, processor_path=proc_dir)(samples)
    _assert_close(ours, ref)
    from_st = registry.REWARDS.get("aesthetic")(
        path=model_dir, head_path=st, processor_path=proc_dir
    )
    np.testing.assert_array_equal(from_st(samples), ours)
    exported = A.export_aesthetic_head(A.load_aesthetic_head(pth))
    for k, v in state.items():
        np.testing.assert_array_equal(exported[k], v.numpy())


def test_videos_batching_and_processor_in_model_folder(folders, tmp_path):
    import shutil

    _, model_dir, proc_dir = folders["gelu"]
    both = tmp_path / "both"
    shutil.copytree(model_dir, both)
    for f in proc_dir.iterdir():
        shutil.copy(f, both)
    reward = C.PickScore(path=both)  # processor_path defaults to path
    frames = _samples(6, 64, 48, seed=1)
    per_frame = reward(frames)
    # Two 3-frame videos: each frame scored against its video's prompt, then averaged.
    prompts = [frames.prompts[0], frames.prompts[3]]
    videos = Samples(prompts=prompts, videos=frames.images.reshape(2, 3, 64, 48, 3))
    flat = Samples(prompts=[p for p in prompts for _ in range(3)], images=frames.images)
    np.testing.assert_allclose(reward(videos), reward(flat).reshape(2, 3).mean(1), rtol=1e-6)
    chunked = C.PickScore(path=both, batch_size=4)  # 6 = 4 + 2 (padded to 4)
    np.testing.assert_allclose(chunked(frames), per_frame, rtol=1e-6, atol=1e-7)


def test_clear_errors(folders, heads, tmp_path):
    _, model_dir, proc_dir = folders["quick"]
    with pytest.raises(
        C.RewardConfigError, match=r"reward 'pickscore': args.path is required.*never downloads"
    ):
        C.PickScore()
    with pytest.raises(C.RewardConfigError, match=r"args.path='/nope' does not exist"):
        C.CLIPScore(path="/nope")
    with pytest.raises(C.RewardConfigError, match=r"args.processor_path='/nope/p' does not exist"):
        C.CLIPScore(path=model_dir, processor_path="/nope/p")
    with pytest.raises(
        C.RewardConfigError, match=r"no preprocessor_config.json.*set args.processor_path"
    ):
        C.CLIPScore(path=model_dir)  # the model folder has no processor files
    with pytest.raises(
        C.RewardConfigError, match=r"reward 'aesthetic': args.head_path is required"
    ):
        C.Aesthetic(path=model_dir, processor_path=proc_dir)
    # A head for another CLIP width, and one with a non-published hidden width.
    wrong_width = heads["gelu"][1]
    with pytest.raises(
        C.RewardConfigError,
        match=r"'layers.0.weight' has shape \(1024, 12\), expected \(1024, 16\)",
    ):
        C.Aesthetic(path=model_dir, head_path=wrong_width, processor_path=proc_dir)
    state = {k: v.numpy() for k, v in heads["quick"][0].items()}
    state["layers.0.weight"], state["layers.0.bias"] = (
        state["layers.0.weight"][:512],
        state["layers.0.bias"][:512],
    )
    W.save_safetensors(tmp_path / "bad.safetensors", state)
    with pytest.raises(
        W.ConversionError, match=r"'layers.0.weight' has shape \(512, 16\), expected \(1024, 16\)"
    ):
        A.load_aesthetic_head(tmp_path / "bad.safetensors")
    state.pop("layers.7.bias")
    W.save_safetensors(tmp_path / "bad2.safetensors", state)
    with pytest.raises(W.ConversionError, match=r"missing tensor 'layers.7.bias'"):
        A.load_aesthetic_head(tmp_path / "bad2.safetensors")


def test_registered_through_the_package():
    import ffjax.rewards  # noqa: F401  (registers every reward module)

    for name in ("clip_score", "pickscore", "aesthetic"):
        assert registry.REWARDS.get(name).kind == "pointwise"


def test_pickscore_rank_is_the_rank_of_pickscore_within_groups(folders):
    _, model_dir, proc_dir = folders[next(iter(CLIP_MODEL_CONFIGS))]
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (6, 64, 48, 3), dtype=np.uint8)
    samples = Samples(prompts=[CORPUS[0]] * 3 + [CORPUS[1]] * 3, images=images,
                      group_ids=[0, 0, 0, 1, 1, 1])  # fmt: skip
    pick = C.PickScore(path=model_dir, processor_path=proc_dir)(samples)
    rank = registry.REWARDS.get("pickscore_rank")(path=model_dir, processor_path=proc_dir)
    assert rank.kind == "groupwise"
    got = rank(samples)
    for g in (slice(0, 3), slice(3, 6)):  # ranks 1..3 of 3, by PickScore order
        want = (np.argsort(np.argsort(pick[g])) + 1) / 3
        np.testing.assert_allclose(got[g], want, rtol=0, atol=1e-7)
