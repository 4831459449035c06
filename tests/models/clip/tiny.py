"""Tiny random transformers `CLIPModel`s, built offline in milliseconds."""

from __future__ import annotations

# name -> CLIPConfig kwargs. Two image / patch sizes, both activations, both pooling rules.
CLIP_MODEL_CONFIGS = {
    # quick_gelu, 30 px / 6 px patches (5 x 5 grid), legacy eos id 2 (argmax pooling)
    "quick": dict(
        text_config=dict(vocab_size=130, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=2,
                         hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                           num_attention_heads=3, image_size=30, patch_size=6, hidden_act="quick_gelu"),
        projection_dim=16,
    ),
    # exact gelu (ViT-H-14 / PickScore), 28 px / 4 px patches (7 x 7), eos id 1, odd widths
    "gelu": dict(
        text_config=dict(vocab_size=130, hidden_size=24, intermediate_size=50, num_hidden_layers=3,
                         num_attention_heads=3, max_position_embeddings=77, eos_token_id=1,
                         bos_token_id=0, pad_token_id=1, hidden_act="gelu"),
        vision_config=dict(hidden_size=20, intermediate_size=36, num_hidden_layers=3,
                           num_attention_heads=5, image_size=28, patch_size=4, hidden_act="gelu",
                           layer_norm_eps=1e-6),
        projection_dim=12,
        logit_scale_init_value=3.0,
    ),
}  # fmt: skip


def build_clip(name: str, seed: int):
    """A perturbed float32 transformers `CLIPModel` for `CLIP_MODEL_CONFIGS[name]` (eval mode)."""
    from tests.models.text.tiny import build

    return build("CLIPModel", CLIP_MODEL_CONFIGS[name], seed)
