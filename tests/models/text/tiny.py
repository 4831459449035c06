"""Tiny random transformers text encoders and tokenizers, built offline in milliseconds."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch

CORPUS = [
    "a photo of a cat sitting on a red mat",
    "a dog running in the park at sunset",
    "an astronaut riding a horse on the moon",
    "a bowl of fruit on a wooden table",
    "the quick brown fox jumps over the lazy dog",
    "<|im_start|>system describe the image<|im_end|> <|im_start|>user",
]

# name -> (transformers class name, config kwargs). vocab sizes cover the tiny tokenizers.
CLIP_CONFIGS = {
    # legacy eos_token_id == 2: pooled at argmax(input_ids); quick_gelu; no projection
    "legacy": ("CLIPTextModel", dict(vocab_size=130, hidden_size=32, intermediate_size=37,
               num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77, eos_token_id=2,
               hidden_act="quick_gelu")),
    # eos id 1 (first-EOS pooling), exact gelu, odd widths, with projection
    "proj": ("CLIPTextModelWithProjection", dict(vocab_size=130, hidden_size=24, intermediate_size=50,
             num_hidden_layers=3, num_attention_heads=3, max_position_embeddings=77, eos_token_id=1,
             bos_token_id=0, pad_token_id=1, hidden_act="gelu", projection_dim=20)),
}  # fmt: skip
T5_CONFIGS = {
    "t5_gated": ("T5EncoderModel", dict(vocab_size=64, d_model=32, d_kv=8, d_ff=40, num_layers=2,
                 num_heads=4, feed_forward_proj="gated-gelu", relative_attention_num_buckets=16,
                 relative_attention_max_distance=64)),
    "t5_relu": ("T5EncoderModel", dict(vocab_size=64, d_model=24, d_kv=6, d_ff=36, num_layers=3,
                num_heads=2, feed_forward_proj="relu")),
    "umt5_gated": ("UMT5EncoderModel", dict(vocab_size=64, d_model=32, d_kv=8, d_ff=40, num_layers=2,
                   num_heads=4, feed_forward_proj="gated-gelu", relative_attention_num_buckets=16,
                   relative_attention_max_distance=64)),
    "umt5_relu": ("UMT5EncoderModel", dict(vocab_size=64, d_model=24, d_kv=6, d_ff=36, num_layers=3,
                  num_heads=2, feed_forward_proj="relu")),
}  # fmt: skip


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Adds noise to every parameter so unit norms / zero biases cannot hide a mapping bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def build(class_name: str, config: dict, seed: int) -> torch.nn.Module:
    """A perturbed float32 transformers model of `class_name` (eager attention, eval mode)."""
    import transformers

    cls = getattr(transformers, class_name)
    cfg_cls = cls.config_class
    torch.manual_seed(seed)
    model = cls(cfg_cls(**config, attn_implementation="eager"))
    return perturb(model, seed + 1000)


def clip_tokenizer(path: str | os.PathLike, model_max_length: int = 77):
    """A byte-level-free BPE CLIPTokenizer trained on CORPUS, saved to `path`; returns it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<|startoftext|>", "<|endoftext|>"]
    tok.train_from_iterator(
        CORPUS * 3,
        trainers.BpeTrainer(
            vocab_size=120, special_tokens=special, end_of_word_suffix="</w>", show_progress=False
        ),
    )
    model = json.loads(tok.to_str())["model"]
    # The trainer breaks frequency ties by hash order, which differs between processes:
    # the same tokens and merges come out with other ids and priorities. Sorted, they
    # give every process the same tokenizer (and so the same tiny models' outputs).
    merges = sorted(tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"])
    rest = sorted((t for t in model["vocab"] if t not in special), key=lambda t: (len(t), t))
    vocab = {t: i for i, t in enumerate([*special, *rest])}
    out = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    out.save_pretrained(path)
    return out


def t5_tokenizer(path: str | os.PathLike, model_max_length: int = 512):
    """A Unigram T5Tokenizer (no extra ids) trained on CORPUS, saved to `path`; returns it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=60,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    out = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    out.save_pretrained(path)
    return out


def random_ids(
    rng: np.random.RandomState, batch: int, length: int, vocab: int, eos: int
) -> np.ndarray:
    """int64[B, L] ids in [3, vocab) with an EOS at a random position per row (pooling target)."""
    ids = rng.randint(3, vocab, (batch, length))
    for row in ids:
        row[rng.randint(1, length)] = eos
    return ids


def right_padded_mask(rng: np.random.RandomState, batch: int, length: int) -> np.ndarray:
    """int64[B, L] mask: row 0 full, others with a random count of trailing zeros."""
    mask = np.ones((batch, length), np.int64)
    for b in range(1, batch):
        mask[b, rng.randint(1, length) :] = 0
    return mask


# Qwen2.5-VL language model of the tiny Qwen-Image pipeline (vocab covers `qwen2_tokenizer`).
QWEN_IMAGE_TEXT = dict(vocab_size=330, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       bos_token_id=0, eos_token_id=0, pad_token_id=0,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                        "mrope_section": [1, 1, 2]})  # fmt: skip
QWEN_IMAGE_VISION = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                         fullatt_block_indexes=[0], patch_size=2, spatial_merge_size=1,
                         temporal_patch_size=1, window_size=4)  # fmt: skip


def qwen2_tokenizer(path: str | os.PathLike, padding_side: str = "right"):
    """A byte-level BPE Qwen2Tokenizer that knows <|im_start|> / <|im_end|>, saved to `path`.

    Trained on CORPUS wrapped in Qwen-Image's chat template, so the template's text gets
    multi-byte tokens; every byte is in the vocabulary (no unknown tokens).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from ffjax.models.text.encode import QWEN_IMAGE_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([QWEN_IMAGE_TEMPLATE.format(c) for c in CORPUS] * 3, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    out = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side=padding_side,
        model_max_length=131072,
    )
    out.save_pretrained(path)
    return out


def qwen_image_pipeline(path: str | os.PathLike, seed: int = 30):
    """A tiny random QwenImagePipeline saved to `path` (text parts perturbed); returns it."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    path = os.fspath(path)
    text_encoder = build(
        "Qwen2_5_VLForConditionalGeneration",
        dict(text_config=QWEN_IMAGE_TEXT, vision_config=QWEN_IMAGE_VISION),
        seed=seed,
    )
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=QWEN_IMAGE_TEXT["hidden_size"], axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(
        base_dim=4, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = qwen2_tokenizer(tmp)
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return pipe
