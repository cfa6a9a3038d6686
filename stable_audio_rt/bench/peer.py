"""The peer: diffusers' StableAudioPipeline on the same random weights as ours.

diffusers' modules are built at the config's geometry with their own random initialisation,
saved in the diffusers layout, and our pipeline loads that folder, so both run the same
weights. diffusers is an optional dependency of the benchmark only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.models.config import T5_BASE, StableAudioConfig
from stable_audio_rt.models.random_init import TOKENIZER_VOCAB_SIZE, build_tokenizer
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import DEFAULT_SIGMA_MAX, DEFAULT_SIGMA_MIN

# Stable Audio Open 1.0's scheduler as the diffusers pipeline ships it.
SCHEDULER = {
    "sigma_min": DEFAULT_SIGMA_MIN,
    "sigma_max": DEFAULT_SIGMA_MAX,
    "solver_order": 2,
    "prediction_type": "v_prediction",
    "sigma_data": 1.0,
    "sigma_schedule": "exponential",
}


@dataclass
class Peer:
    pipeline: object  # diffusers.StableAudioPipeline
    folder: Path  # the shared weights, in the diffusers layout

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.transformer.dtype

    def module_dtypes(self) -> dict[str, str]:
        """Each module's dtype as loaded (the report records what ran, not what was asked)."""
        modules = ("transformer", "vae", "text_encoder", "projection_model")
        return {m: str(getattr(self.pipeline, m).dtype).removeprefix("torch.") for m in modules}

    def generate(
        self,
        prompt: str,
        negative_prompt: str | None,
        steps: int,
        cfg_scale: float,
        batch: int,
        seconds: float,
        seed: int,
    ):
        with warnings.catch_warnings():
            # diffusers' Brownian tree queries its own rounded ends; torchsde clamps them and
            # warns on every step (the runtime's sampler silences the same warning).
            warnings.filterwarnings("ignore", message="Should have", module="torchsde")
            return self.pipeline(
                prompt=prompt,
                negative_prompt=negative_prompt,
                num_inference_steps=steps,
                guidance_scale=cfg_scale,
                audio_end_in_s=seconds,
                num_waveforms_per_prompt=batch,
                generator=torch.Generator().manual_seed(seed),
                output_type="pt",
            ).audios


def _diffusers():
    """diffusers, an optional dependency of the benchmark only, or the error that says so."""
    try:
        import diffusers
    except ImportError as e:
        raise ConfigError(f"the diffusers peer needs diffusers ({e}): pip install diffusers") from e
    return diffusers


def diffusers_modules(config: StableAudioConfig, frames: int) -> tuple:
    """diffusers' DiT (a `frames`-frame window), Oobleck VAE and number-conditioner projection
    at `config`'s geometry, with diffusers' own random initialisation."""
    diffusers = _diffusers()
    dit, vae, cond = config.dit, config.vae, config.conditioning
    transformer = diffusers.StableAudioDiTModel(
        sample_size=frames,
        in_channels=dit.io_channels,
        num_layers=dit.depth,
        attention_head_dim=dit.head_dim,
        num_attention_heads=dit.num_heads,
        num_key_value_attention_heads=dit.num_kv_heads,
        out_channels=dit.io_channels,
        cross_attention_dim=dit.context_dim,
        time_proj_dim=dit.timestep_features_dim,
        global_states_input_dim=dit.global_cond_dim,
        cross_attention_input_dim=dit.cond_token_dim,
    )
    oobleck = diffusers.AutoencoderOobleck(
        encoder_hidden_size=vae.channels,
        downsampling_ratios=list(vae.strides),
        channel_multiples=list(vae.channel_multiples),
        decoder_channels=vae.channels,
        decoder_input_channels=vae.latent_dim,
        audio_channels=vae.audio_channels,
        sampling_rate=config.sample_rate,
    )
    projection = diffusers.StableAudioProjectionModel(
        text_encoder_dim=cond.cond_dim,
        conditioning_dim=cond.cond_dim,
        min_value=int(cond.numbers[0].min_value),
        max_value=int(cond.numbers[0].max_value),
    )
    return transformer, oobleck, projection


def load_peer(
    folder: Path, frames: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Peer:
    """diffusers' pipeline from a diffusers-layout checkpoint folder, with a `frames` window, every
    module (T5 included) in `dtype` as `torch_dtype` loads it (keeping in fp32 whatever diffusers
    keeps there), on `device`."""
    with warnings.catch_warnings():
        # torch_dtype is the keyword every diffusers ≥ 0.30 knows; later ones rename it and warn.
        warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated", category=FutureWarning)
        pipeline = _diffusers().StableAudioPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    # The pipeline's window is the transformer's sample_size; nothing else reads it.
    pipeline.transformer.register_to_config(sample_size=frames)
    pipeline.set_progress_bar_config(disable=True)
    return Peer(pipeline, Path(folder))


def build_peer(config: StableAudioConfig, frames: int, folder: Path) -> Peer:
    """diffusers' pipeline with a `frames`-frame window at `config`'s geometry and random
    weights, written to `folder` for our pipeline to load (the caller removes it)."""
    if config.objective != "v" or config.dit.qk_norm:
        raise ConfigError("the diffusers peer exists for Stable Audio Open 1.0's structure only")
    from transformers import T5Config, T5EncoderModel

    diffusers = _diffusers()
    cond = config.conditioning
    wide = cond.cond_dim == T5_BASE.d_model  # t5-base's shape there, a small stand-in elsewhere
    d_kv = T5_BASE.d_kv if wide else cond.cond_dim // 4
    t5 = T5Config(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        d_model=cond.cond_dim,
        d_kv=d_kv,
        d_ff=T5_BASE.d_ff // T5_BASE.d_model * cond.cond_dim,
        num_layers=T5_BASE.layers if wide else 2,
        num_heads=cond.cond_dim // d_kv,
        feed_forward_proj="relu",
    )
    transformer, vae, projection_model = diffusers_modules(config, frames)
    pipeline = diffusers.StableAudioPipeline(
        vae=vae,
        text_encoder=T5EncoderModel(t5),
        projection_model=projection_model,
        tokenizer=build_tokenizer(cond.t5_max_length),
        transformer=transformer,
        scheduler=diffusers.CosineDPMSolverMultistepScheduler(**SCHEDULER),
    )
    pipeline.set_progress_bar_config(disable=True)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return Peer(pipeline, folder)


class PeerPipelines:
    """The peer in each precision it is paired at, all from one weights folder written once.

    One pipeline is held at a time (two real-size ones would double the memory), and each
    precision is loaded from the folder's fp32 files: casting an already cast pipeline back
    would not give the same weights.
    """

    def __init__(self, first: Peer, frames: int, device: torch.device) -> None:
        self.folder, self.frames, self.device = first.folder, frames, device
        first.pipeline.to(device)
        self._current = first

    def peer(self, dtype: torch.dtype) -> Peer:
        if self._current.dtype != dtype:
            self._current = None  # let the previous pipeline go before the next one loads
            self._current = load_peer(self.folder, self.frames, dtype, self.device)
        return self._current
