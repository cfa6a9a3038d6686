"""Does T5 need its fp32 island when the model runs in bf16? Time and one-call error of t5-base.

    python benchmarks/bench_t5_precision.py --json benchmarks/results/t5_precision_cpu.json

A random T5 encoder of t5-base's geometry (12 layers, d_model 768, d_ff 3072; no download),
the conditioner's own T5TextEncoder around it, encoding a CFG batch (a prompt and a negative
prompt, 128 tokens each, as SAO 1.0 pads them). fp32 is the reference; bf16 is the same weights
cast once. Interleaved repeats, medians.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from report import emit, header
from transformers import T5Config, T5EncoderModel

from stable_audio_rt.bench.quality import max_relative_error, snr_db
from stable_audio_rt.models.conditioners import T5TextEncoder
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0
from stable_audio_rt.models.random_init import TOKENIZER_VOCAB_SIZE, build_tokenizer, randomize_
from stable_audio_rt.runtime.estimate import T5_BASE_DIMS

PROMPTS = ["128 bpm tech house drum loop", "low quality, noise"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    d_model, d_ff, layers = T5_BASE_DIMS
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=TOKENIZER_VOCAB_SIZE,
            d_model=d_model,
            d_kv=64,
            d_ff=d_ff,
            num_layers=layers,
            num_heads=d_model // 64,
            feed_forward_proj="relu",
        )  # fmt: skip
    )
    randomize_(t5, torch.Generator().manual_seed(0))
    encoders = {"fp32": T5TextEncoder(t5), "bf16": T5TextEncoder(copy.deepcopy(t5).to(torch.bfloat16))}
    tokens = build_tokenizer(STABLE_AUDIO_OPEN_1_0.conditioning.t5_max_length)(
        PROMPTS, padding="max_length", max_length=STABLE_AUDIO_OPEN_1_0.conditioning.t5_max_length,
        truncation=True, return_tensors="pt",
    )  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in encoders}
    outputs = {}
    with torch.inference_mode():
        for name, encoder in encoders.items():
            outputs[name] = encoder(tokens.input_ids, tokens.attention_mask).float()  # warm
        for _ in range(args.repeats):
            for name, encoder in encoders.items():
                began = time.perf_counter()
                encoder(tokens.input_ids, tokens.attention_mask)
                times[name].append(time.perf_counter() - began)
    report = {
        **header(torch.device("cpu")),
        "model": "random t5-base geometry, CFG batch of 2 × 128 tokens",
        "seconds": {name: statistics.median(t) for name, t in times.items()},
        "bf16_snr_db": snr_db(outputs["bf16"], outputs["fp32"]),
        "bf16_max_relative_error": max_relative_error(outputs["bf16"], outputs["fp32"]),
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
