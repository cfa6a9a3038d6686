"""Where Stable Audio Open Small's bf16 error comes from (issue 24, item 3).

    python benchmarks/small_bf16_error.py --json benchmarks/results/small_bf16_error_cpu.json

Random weights of Small's real geometry, 8 pingpong steps, full window, batch 1, the same seed
and prompt in fp32 and in bf16 (weights cast from the same fp32 values, loaded as the runtime
loads them). It reports, as SNR in dB against fp32 (10·log10 Σref² / Σ(x − ref)²):

1. end to end: the latents, and the audio decoded in fp32 from each (the sampler's part) and by
   each precision's own decoder (what a user hears);
2. per DiT call: at each step of the fp32 trajectory, the bf16 DiT on exactly that step's input
   (the one-call error at t = 1 … 0.12);
3. the trajectory's gain: the fp32 run again with every DiT output perturbed by Gaussian noise
   of that one-call error's relative size, and with no bf16 anywhere. If its end-to-end SNR is
   as low as bf16's, the random weights amplify a normal per-call error over 8 steps; if it is
   much higher, something in our bf16 path is wrong;
4. the decoder's gain: the fp32 latents plus Gaussian noise at bf16's latent SNR, decoded in
   fp32, at the latents' own scale and rescaled to unit RMS (the scale of a trained VAE's
   latents). A random DiT's latents are tens of units; the random decoder's Snake (sin²(α·x))
   turns small relative changes of large inputs into large ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from report import emit, header

from stable_audio_rt.bench.quality import snr_db
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_SMALL
from stable_audio_rt.models.random_init import random_model
from stable_audio_rt.runtime.backends.torch_backend import TorchComponents, TorchDiTStep
from stable_audio_rt.runtime.pipeline import StableAudio

PROMPT = "128 bpm tech house drum loop"


class Recorder:
    """Wraps TorchDiTStep so that each fp32 call also runs the bf16 twin on the same input
    (one-call error), or perturbs the fp32 output by relative noise (trajectory gain)."""

    def __init__(self, twin_dit, perturb: float | None, seed: int) -> None:
        self.twin_dit, self.perturb = twin_dit, perturb
        self.generator = torch.Generator().manual_seed(seed)
        self.per_call: list[float] = []
        self.relative_rms: list[float] = []

    def install(self, monkeypatch_target=TorchDiTStep):
        recorder, bind, call = self, monkeypatch_target.bind, monkeypatch_target.__call__

        def bound(step, t, context, global_cond):
            bind(step, t, context, global_cond)
            if recorder.twin_dit is not None and step.dit is not recorder.twin_dit:
                step.twin = TorchDiTStep(
                    recorder.twin_dit, step.steps, step.rows, step.context_kv[0][0].shape[2]
                )
                bind(step.twin, t, context, global_cond)

        def called(step, model_input, i):
            v = call(step, model_input, i)
            if getattr(step, "twin", None) is not None:
                low = step.twin(model_input.to(torch.bfloat16), i).float()
                recorder.per_call.append(snr_db(low, v))
                recorder.relative_rms.append(((low - v).pow(2).mean() / v.pow(2).mean()).sqrt().item())
            if recorder.perturb is not None:
                noise = torch.randn(v.shape, generator=recorder.generator).to(v)
                v = v + recorder.perturb * v.pow(2).mean().sqrt() * noise
            return v

        monkeypatch_target.bind, monkeypatch_target.__call__ = bound, called
        return lambda: (
            setattr(monkeypatch_target, "bind", bind),
            setattr(monkeypatch_target, "__call__", call),
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = STABLE_AUDIO_OPEN_SMALL
    fp32 = random_model(config, seed=0, dtype=torch.float32)
    bf16 = random_model(config, seed=0, dtype=torch.bfloat16)
    pipes = {name: StableAudio(TorchComponents(m)) for name, m in (("fp32", fp32), ("bf16", bf16))}
    rows = []
    for seed in args.seeds:
        options = dict(seed=seed, vae_chunk=None)
        reference = pipes["fp32"].generate(PROMPT, **options)
        low = pipes["bf16"].generate(PROMPT, **options)
        recorder = Recorder(bf16.dit, None, seed)
        undo = recorder.install()
        try:
            again = pipes["fp32"].generate(PROMPT, **options)
        finally:
            undo()
        assert torch.equal(again.latents, reference.latents)  # the twin does not disturb fp32
        perturb = sum(recorder.relative_rms) / len(recorder.relative_rms)
        noisy = Recorder(None, perturb, seed)
        undo = noisy.install()
        try:
            perturbed = pipes["fp32"].generate(PROMPT, **options)
        finally:
            undo()
        with torch.no_grad():
            decode32 = fp32.vae.decode
            low_audio_fp32_decode = decode32(low.latents.float())
            latent_snr = snr_db(low.latents, reference.latents)
            gain = {}
            for name, scale in (("own_scale", 1.0), ("unit_rms", 1 / reference.latents.pow(2).mean().sqrt())):
                clean = reference.latents * scale
                noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
                noisy = clean + noise * clean.pow(2).mean().sqrt() * 10 ** (-latent_snr / 20)
                gain[name] = snr_db(decode32(noisy), decode32(clean))
        rows.append(
            {
                "seed": seed,
                "latents_snr_db": latent_snr,
                "latents_rms": reference.latents.pow(2).mean().sqrt().item(),
                "audio_snr_db": snr_db(low.audio, reference.audio),
                "audio_snr_db_fp32_decoder": snr_db(low_audio_fp32_decode, decode32(reference.latents)),
                "dit_one_call_snr_db_per_step": recorder.per_call,
                "dit_one_call_relative_rms_mean": perturb,
                "fp32_perturbed_latents_snr_db": snr_db(perturbed.latents, reference.latents),
                "fp32_decode_of_latents_noised_to_that_snr_db": gain,
            }
        )
        print(rows[-1], flush=True)
    emit({**header(torch.device("cpu")), "model": "random Small, real geometry", "runs": rows}, args.json)


if __name__ == "__main__":
    main()
