"""Precision, stage by stage: one call of each stage against fp32 on the same weights and inputs.

End-to-end quality mixes every stage's rounding with the sampler's amplification over many
steps; this report isolates each stage. For one workload shape it runs, through the pipeline's
own code (`StableAudio.prepare`, `region.condition`/`start`/`decode`, `sampler_step`):

- "t5": the conditioning as the DiT receives it (T5 of the benchmark prompt, and of the negative
  prompt with CFG, plus the number tokens; context and global condition);
- one DiT call per noise level (the CFG batch when the workload uses CFG): σ = 500, 100, 10, 0.3
  for the v objective (SAO 1.0), t = 0.9, 0.5, 0.1 for rectified flow (Small), on fresh seeded
  latents noised to that level; the sampler's step computes the model input (c_in, the model
  dtype, the CFG rows) and the guided denoised estimate, which is reported too;
- "decode": one VAE decode of the same latents.

Each stage's SNR (`quality.snr_db`) and max relative error (`quality.max_relative_error`)
compare a precision's outputs with the fp32 outputs of the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from stable_audio_rt.bench.quality import max_relative_error, snr_db
from stable_audio_rt.bench.runner import PROMPT, Workload
from stable_audio_rt.runtime import region
from stable_audio_rt.runtime.backends.protocols import StepModel
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import (
    DEFAULT_SIGMA_MAX,
    DEFAULT_SIGMA_MIN,
    sigma_to_t,
    step_table,
)
from stable_audio_rt.runtime.sampling.pingpong import pingpong_table
from stable_audio_rt.runtime.sampling.state import HISTORY
from stable_audio_rt.runtime.sampling.step import sampler_step

# The issue's levels, in the order a sampler visits them: SAO 1.0's σmax and σmin and two
# between; for rectified flow, near noise, the middle and near the data.
V_SIGMAS = (DEFAULT_SIGMA_MAX, 100.0, 10.0, DEFAULT_SIGMA_MIN)
RF_TIMES = (0.9, 0.5, 0.1)
T5_STAGE, DECODE_STAGE = "t5", "decode"
T5_WHAT = "conditioning as the DiT receives it: T5 context + number tokens, and the global condition"
DECODE_WHAT = "one VAE decode of the seeded latents"


@dataclass(frozen=True)
class NoiseLevels:
    """Where the DiT is measured for one objective, and how that objective's sampler sees a level."""

    symbol: str  # "σ" or "t"
    values: tuple[float, ...]
    # The DiT's time input for the levels, and the sampler's step table over the levels then 0.
    times: Callable[[torch.Tensor], torch.Tensor]
    table: Callable[[torch.Tensor], torch.Tensor]
    # x at a level from clean latents and noise: x0 + σ·ε (v), (1 − t)·x0 + t·ε (rectified flow).
    noisy: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]

    def stage(self, level: float) -> str:
        return f"dit {self.symbol}={level:g}"


LEVELS: dict[str, NoiseLevels] = {
    "v": NoiseLevels("σ", V_SIGMAS, sigma_to_t, step_table, lambda x0, e, s: x0 + s * e),
    "rf_denoiser": NoiseLevels(
        "t", RF_TIMES, lambda t: t, pingpong_table, lambda x0, e, t: (1 - t) * x0 + t * e
    ),
}


@dataclass(frozen=True)
class StageOutput:
    what: str
    output: torch.Tensor  # float32 on the CPU
    denoised: torch.Tensor | None = None  # DiT stages: the sampler's guided estimate D


@dataclass(frozen=True)
class StageError:
    stage: str
    what: str
    snr_db: float
    max_relative_error: float
    denoised_snr_db: float | None  # DiT stages: of the guided denoised estimate


class _RecordingStep:
    """The request's DiT step, keeping its last output for the report (the sampler only reads it)."""

    def __init__(self, step: StepModel) -> None:
        self.step = step
        self.output: torch.Tensor | None = None

    def bind(self, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor) -> None:
        self.step.bind(t, context, global_cond)

    def __call__(self, model_input: torch.Tensor, i: int) -> torch.Tensor:
        self.output = self.step(model_input, i)
        return self.output

    def buffers(self) -> list[torch.Tensor]:
        return self.step.buffers()


def _host(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().float().cpu().clone()


def stage_outputs(pipe: StableAudio, workload: Workload) -> dict[str, StageOutput]:
    """One call of each stage on `workload`'s shape (frames, batch, CFG with its negative prompt),
    inputs fixed by `workload.seed`: the same for every precision of the same model."""
    config, components = pipe.config, pipe.components
    levels = LEVELS[config.objective]
    options = workload.options(config.sample_rate, config.vae.downsampling_ratio)
    options["steps"] = len(levels.values)  # one sampler step per level
    resolved = resolve_request(GenerationRequest(prompts=(PROMPT,), **options), config)
    request = pipe.prepare(resolved)  # tokens, negative prompt and numbers as generate writes them
    state = request.state
    schedule = torch.tensor([*levels.values, 0.0])
    request.inputs.times.copy_(levels.times(schedule[:-1]))
    state.scalars.copy_(levels.table(schedule))
    generator = torch.Generator().manual_seed(workload.seed)
    latents, noise = (torch.randn(state.x.shape, generator=generator).to(pipe.device) for _ in range(2))
    outputs: dict[str, StageOutput] = {}
    with torch.no_grad():
        context, global_cond = region.condition(request, components)
        conditioning = torch.cat((context.flatten(), global_cond.flatten()))
        outputs[T5_STAGE] = StageOutput(T5_WHAT, _host(conditioning))
        region.start(request, components)  # binds the DiT step to these times and conditioning
        recorder = _RecordingStep(state.denoiser)
        state.denoiser = recorder
        for i, level in enumerate(levels.values):
            state.x.copy_(levels.noisy(latents, noise, level))
            sampler_step(state, i)
            what = f"one DiT call at {levels.symbol} = {level:g} (DiT rows: {state.model_input.shape[0]})"
            denoised = _host(state.denoised[i % HISTORY])
            outputs[levels.stage(level)] = StageOutput(what, _host(recorder.output), denoised)
        state.x.copy_(latents)
        region.decode(request, components)
        outputs[DECODE_STAGE] = StageOutput(DECODE_WHAT, _host(request.audio))
    return outputs


def compare(ours: dict[str, StageOutput], reference: dict[str, StageOutput]) -> list[StageError]:
    """Each stage of `ours` against the same stage of `reference` (same inputs)."""
    errors = []
    for stage, out in ours.items():
        ref = reference[stage]
        denoised = None if out.denoised is None else snr_db(out.denoised, ref.denoised)
        errors.append(
            StageError(
                stage, out.what, snr_db(out.output, ref.output), max_relative_error(out.output, ref.output),
                denoised,
            )
        )  # fmt: skip
    return errors
