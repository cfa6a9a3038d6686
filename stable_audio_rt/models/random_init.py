"""Seeded random-weight models: the `tiny-random` (SAO 1.0's structure) and `tiny-random-small`
(SAO Small's) smoke-test models need no download.

Its audio is noise; it exists so the whole pipeline can run anywhere in seconds.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import torch
from torch import nn

from stable_audio_rt.models.conditioners import Conditioner, NumberConditioners, T5TextEncoder
from stable_audio_rt.models.config import (
    STABLE_AUDIO_OPEN_1_0,
    STABLE_AUDIO_OPEN_SMALL,
    TINY,
    TINY_SMALL,
    StableAudioConfig,
)
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.loading import DEFAULT_T5_DTYPE, StableAudioModel
from stable_audio_rt.models.vae import OobleckVAE, cast_keeping_fp32_

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TINY_RANDOM = "tiny-random"
TINY_RANDOM_SMALL = "tiny-random-small"
# Small enough to train in milliseconds; the ids of t5-base's specials (pad 0, eos 1, unk 2).
TOKENIZER_VOCAB_SIZE = 64
TOKENIZER_SENTENCES = (
    "warm analog synth pad with slow attack",
    "drum loop 120 bpm, punchy kick and crisp snare",
    "field recording of rain on a tin roof",
    "solo acoustic guitar fingerpicking in a minor key",
    "ambient drone, deep sub bass, evolving textures",
    "bird song at dawn in a quiet forest",
)
# Gains of about 0.5 keep random Oobleck activations O(1) (near 1 they grow without bound).
CONV_GAIN = 0.5


def build_tokenizer(max_length: int) -> PreTrainedTokenizerBase:
    """A T5 tokenizer trained with sentencepiece on a few sentences."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_SENTENCES * 5),
        model_writer=proto,
        vocab_size=TOKENIZER_VOCAB_SIZE,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def randomize_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Fill every parameter with seeded random values of a sensible scale, in place."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() >= 2:
                gain = (
                    CONV_GAIN if isinstance(module.get_submodule(name.rpartition(".")[0]), nn.Conv1d) else 1
                )
                p.copy_(noise * gain * p[0].numel() ** -0.5)
            elif name.endswith(("norm.weight", "layer_norm.weight")):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.5 * noise if name.endswith(("alpha", "beta", "freqs")) else 0.1 * noise)
    return module.eval().requires_grad_(False)


def random_model(
    config: StableAudioConfig = TINY,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    t5_dtype: torch.dtype = DEFAULT_T5_DTYPE,
) -> StableAudioModel:
    """A model of `config`'s geometry with seeded random weights and a random small T5."""
    from transformers import T5Config, T5EncoderModel

    generator = torch.Generator().manual_seed(seed)
    cond = config.conditioning
    t5_heads = max(1, cond.cond_dim // 64)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=TOKENIZER_VOCAB_SIZE,
            d_model=cond.cond_dim,
            d_kv=cond.cond_dim // t5_heads,
            d_ff=2 * cond.cond_dim,
            num_layers=2,
            num_heads=t5_heads,
            feed_forward_proj="relu",
        )
    )
    # Built without torch's default init (randomize_ overwrites every parameter, and the init
    # was half of a real-size build's time); T5 is built as usual: its embeddings are tied.
    with torch.device("meta"):
        ours = [DiT(config.dit), OobleckVAE(config.vae), NumberConditioners(config.conditioning)]
    parts = [m.to_empty(device="cpu") for m in ours] + [t5]
    dit, vae, numbers, t5 = (randomize_(m, generator) for m in parts)
    # Each part cast once from its fp32 values: T5 and Snake's α, β are not rounded through
    # `dtype` on their way to fp32.
    dit, numbers, t5 = dit.to(device, dtype), numbers.to(device, dtype), t5.to(device, t5_dtype)
    cast_keeping_fp32_(vae, dtype, device)
    conditioner = Conditioner(cond, numbers, T5TextEncoder(t5), build_tokenizer(cond.t5_max_length))
    return StableAudioModel(config, dit, vae, conditioner)


# The seeded random models by name, and the config each one has: the tiny smoke-test models,
# and the real geometries (for benchmarks: timings do not depend on the weights' values).
RANDOM_MODELS: dict[str, StableAudioConfig] = {
    TINY_RANDOM: TINY,
    TINY_RANDOM_SMALL: TINY_SMALL,
    "random-stable-audio-open-1.0": STABLE_AUDIO_OPEN_1_0,
    "random-stable-audio-open-small": STABLE_AUDIO_OPEN_SMALL,
}
