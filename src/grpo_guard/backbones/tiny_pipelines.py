"""Tiny, randomly initialised SD3 and Flux pipelines built offline (for tests and for trying the real
backbones on a CPU without any download).

Every component is a real diffusers / transformers class at a tiny size: the transformer, a 4-block VAE
(scale factor 8, like the real one), CLIP and T5 text encoders with tokenizers built in memory. The
pipelines are returned in eval mode (fresh modules are in train mode, and T5's dropout would make
sampling nondeterministic). ``save_tiny_pipeline(kind, path)`` writes one with ``save_pretrained`` so
that it can be loaded back through the real ``from_pretrained`` path:

    python -m grpo_guard.backbones.tiny_pipelines sd3 /tmp/tiny-sd3
    grpo-guard train --config grpo_guard_sd3 --set backbone.params.pretrained=/tmp/tiny-sd3 ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

__all__ = ["tiny_sd3_pipeline", "tiny_flux_pipeline", "save_tiny_pipeline", "clip_tokenizer", "t5_tokenizer"]


def clip_tokenizer(max_len: int = 77):
    # transformers, tokenizers and diffusers: imported where used (seconds to import; runs that need none skip it)
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_len)


def t5_tokenizer(max_len: int = 32):
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"]
    pieces += [("\u2581" + c, -2.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_len)


def _clip_config(hidden: int = 32, proj: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=600, hidden_size=hidden,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                          max_position_embeddings=77, projection_dim=proj, hidden_act="gelu")


def _t5_encoder(d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=128, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def _vae(latent_channels: int = 16):
    from diffusers import AutoencoderKL

    blocks = (8, 16, 16, 16)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=blocks,
                         layers_per_block=1, norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def _eval(pipe):
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval()
    return pipe


def tiny_sd3_pipeline(seed: int = 0, heads: int = 4, head_dim: int = 16, layers: int = 2):
    """An SD3.5-style pipeline (dual attention in layer 0, qk RMS norm), about 0.34 M transformer
    parameters at the defaults; 64 px images have an 8 x 8 x 16 latent."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=layers,
                                   attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
                                   caption_projection_dim=heads * head_dim, pooled_projection_dim=64,
                                   pos_embed_max_size=32, qk_norm="rms_norm", dual_attention_layers=(0,))
        pipe = StableDiffusion3Pipeline(
            transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(),
            text_encoder=CLIPTextModelWithProjection(_clip_config()), tokenizer=clip_tokenizer(),
            text_encoder_2=CLIPTextModelWithProjection(_clip_config()), tokenizer_2=clip_tokenizer(),
            text_encoder_3=_t5_encoder(32), tokenizer_3=t5_tokenizer())
    return _eval(pipe)


def tiny_flux_pipeline(seed: int = 0, heads: int = 2, head_dim: int = 16, layers: int = 1, single_layers: int = 1):
    """A Flux.1-dev-style pipeline (guidance embedding, dynamic shift), about 0.09 M transformer
    parameters at the defaults."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=layers, num_single_layers=single_layers,
                                    attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
                                    pooled_projection_dim=32, guidance_embeds=True,
                                    axes_dims_rope=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8))
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
        pipe = FluxPipeline(transformer=tr, scheduler=sched, vae=_vae(), text_encoder=CLIPTextModel(_clip_config()),
                            tokenizer=clip_tokenizer(), text_encoder_2=_t5_encoder(32), tokenizer_2=t5_tokenizer())
    return _eval(pipe)


def save_tiny_pipeline(kind: str, path: str | Path, seed: int = 0) -> Path:
    """Build the tiny ``kind`` ("sd3" or "flux") pipeline and ``save_pretrained`` it to ``path``."""
    builders = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}
    if kind not in builders:
        raise ValueError(f"kind: expected 'sd3' or 'flux', got {kind!r}")
    path = Path(path)
    builders[kind](seed=seed).save_pretrained(path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m grpo_guard.backbones.tiny_pipelines {sd3|flux} OUT_DIR", file=sys.stderr)
        sys.exit(2)
    print(save_tiny_pipeline(sys.argv[1], sys.argv[2]))
