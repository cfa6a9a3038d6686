"""Conditioning against diffusers: number conditioners vs StableAudioProjectionModel, and the
assembled context/global condition vs StableAudioPipeline's encode_prompt/encode_duration."""

import copy
import re
import threading
import warnings

import numpy as np
import pytest
import torch
from numerics import FP32_REL_TOL, rel_error

from stable_audio_rt.models.conditioners import long_prompt_warning


def _condition(conditioner, prompts, values):
    """Prompts and numbers on the host -> (context, global): the pipeline's tokenize + encode."""
    device = next(conditioner.numbers.parameters()).device
    input_ids, attention_mask = (t.to(device) for t in conditioner.tokenize(prompts))
    return conditioner.encode(input_ids, attention_mask, {i: v.to(device) for i, v in values.items()})


@torch.no_grad()
def test_number_conditioners_match_projection_model(tiny_model, tiny_reference, generator):
    # Values outside [0, 512] check the clamp; fractional values the continuous embedding.
    start = torch.rand(6, generator=generator) * 700 - 100
    total = torch.rand(6, generator=generator) * 700 - 100
    reference = tiny_reference.projection_model(start_seconds=start, end_seconds=total)
    ours = tiny_model.conditioner.number_tokens({"seconds_start": start, "seconds_total": total})
    assert rel_error(ours["seconds_start"], reference.seconds_start_hidden_states) <= FP32_REL_TOL
    assert rel_error(ours["seconds_total"], reference.seconds_end_hidden_states) <= FP32_REL_TOL


@pytest.mark.parametrize(
    "prompts",
    [
        ["warm analog synth pad"],
        ["rain on a tin roof, distant thunder", "x" * 200],  # the second one is truncated
    ],
)
@torch.no_grad()
def test_context_and_global_match_diffusers_pipeline(tiny_model, tiny_reference, prompts, generator):
    batch = len(prompts)
    start = (torch.rand(batch, generator=generator) * 10).tolist()
    total = [
        s + 1 + 30 * r for s, r in zip(start, torch.rand(batch, generator=generator).tolist(), strict=True)
    ]
    pipe = tiny_reference.pipeline()
    text = pipe.encode_prompt(prompts, "cpu", do_classifier_free_guidance=False)
    start_tok, total_tok = pipe.encode_duration(start, total, "cpu", False, batch)
    reference_context = torch.cat([text, start_tok, total_tok], dim=1)
    reference_global = torch.cat([start_tok, total_tok], dim=2).squeeze(1)

    context, global_cond = _condition(
        tiny_model.conditioner,
        prompts,
        {"seconds_start": torch.tensor(start), "seconds_total": torch.tensor(total)},
    )
    cond = tiny_model.config.conditioning
    assert context.shape == (batch, cond.context_tokens, cond.cond_dim)
    assert global_cond.shape == (batch, cond.global_dim)
    assert rel_error(context, reference_context) <= FP32_REL_TOL
    assert rel_error(global_cond, reference_global) <= FP32_REL_TOL


@torch.no_grad()
def test_padded_prompt_tokens_are_exact_zeros(tiny_model):
    ids, mask = tiny_model.conditioner.tokenize(["rain"])
    assert mask.sum() < mask.numel(), "the prompt should leave padding"
    text = tiny_model.conditioner.text_encoder(ids, mask)
    assert torch.all(text[mask == 0] == 0)
    assert torch.all(text[mask == 1].abs().sum(-1) > 0)


@pytest.mark.parametrize(
    "prompts",
    [["rain"], ["rain on a tin roof, distant thunder", "a dog barks"], ["", "x" * 200]],
)
@torch.no_grad()
def test_t5_over_the_used_positions_only_is_the_same_encoding(tiny_model, prompts):
    encoder = copy.deepcopy(tiny_model.conditioner.text_encoder)
    ids, mask = tiny_model.conditioner.tokenize(prompts)
    full = encoder(ids, mask)
    encoder.skips_padding = True
    ours = encoder(ids, mask)
    assert ours.shape == full.shape
    assert torch.all(ours[mask == 0] == 0)
    # The used positions: the same maths (masked keys weigh exactly 0; the position bias is relative).
    assert rel_error(ours, full) <= FP32_REL_TOL


def test_a_prompt_longer_than_t5_reads_is_named_as_losing_its_end(tiny_model):
    conditioner = tiny_model.conditioner
    length = conditioner.config.t5_max_length
    fits, too_long = "rain", " ".join(["rain"] * length)
    assert len(conditioner.tokenizer(too_long)["input_ids"]) > length
    assert conditioner.prompt_warnings([fits]) == []
    (told,) = conditioner.prompt_warnings([fits, too_long])
    assert re.search(rf"is over {length} T5 tokens; the model reads the first {length}", told)
    ids, _ = conditioner.tokenize([fits, too_long])
    assert ids.shape == (2, length)


def test_tokens_are_the_tokenizers_own_at_the_model_length_for_every_prompt_length(tiny_model):
    # stable-audio-tools' T5Conditioner: one tokenizer call, padded and truncated to max_length.
    conditioner = tiny_model.conditioner
    length = conditioner.config.t5_max_length

    def tokens(prompt: str) -> int:  # with the EOS the tokenizer appends
        return len(conditioner.tokenizer(prompt)["input_ids"])

    rng = np.random.default_rng()
    characters = list("abcdefghijklmnopqrstuvwxyz ")
    by_count: dict[int, str] = {}  # a random prompt for each token count met
    edge = {length - 1, length, length + 1}
    for _ in range(100):  # a character at a time: the count moves by a token or two
        prompt = ""
        while tokens(prompt) <= length + 2:
            by_count.setdefault(tokens(prompt), prompt)
            prompt += str(rng.choice(characters))
        if edge <= by_count.keys():
            break
    # Around the edge: fits with room, fills the model's length exactly, one and many past it.
    counts = [c for c in (1, 2, length - 1, length, length + 1, length + 2) if c in by_count]
    assert {length - 1, length, length + 1} <= set(counts), sorted(by_count)
    prompts = [by_count[c] for c in counts] + [prompt * 3]
    expected = conditioner.tokenizer(
        prompts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
    )
    ids, mask = conditioner.tokenize(prompts)
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    # Only the prompts that lose words are named: those over the length, not the one that fills it.
    over = [p for p in prompts if tokens(p) > length]
    assert len(over) == len(prompts) - counts.index(length) - 1
    assert conditioner.prompt_warnings(prompts) == [long_prompt_warning(p, length) for p in over]


def test_tokenizing_from_several_threads_gives_each_call_its_own_tokens(tiny_model):
    """The fast tokenizer keeps each call's truncation and padding on itself: calls from several
    threads (a server's prompt checks beside a run) took each other's lengths (wrong tokens,
    shape errors). Each call must give what it gives alone."""
    conditioner = tiny_model.conditioner
    length = conditioner.config.t5_max_length
    long = " ".join(["rain"] * (4 * length))  # tokenized once more at the model's length
    cases = [["a dog barking"], [long], [long, "wind"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long prompt's own warning
        alone = [conditioner.tokenize(prompts) for prompts in cases]
        warned = [conditioner.prompt_warnings(prompts) for prompts in cases]
    failures: list[str] = []
    start = threading.Barrier(4)

    def tokenizing(k: int) -> None:
        start.wait()
        for i in range(150):
            case = (i + k) % len(cases)
            try:
                if k == 3:  # what a server's checks call while runs tokenize
                    assert conditioner.prompt_warnings(cases[case]) == warned[case]
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ids, mask = conditioner.tokenize(cases[case])
                    assert torch.equal(ids, alone[case][0]) and torch.equal(mask, alone[case][1])
            except Exception as e:  # every kind is a failure to report
                failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=tokenizing, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures[:3]
