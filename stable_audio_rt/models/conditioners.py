"""Conditioning (reference-spec §6): T5 prompt tokens, number conditioners, and their assembly
into the DiT's cross-attention context (B, S, cond_dim) and global condition (B, global_dim).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.models.config import ConditioningConfig, NumberConditionerConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROMPT_ID = "prompt"


class NumberConditioner(nn.Module):
    """A number → one token: clamp, normalise to [0, 1], features [n, sin 2πnw, cos 2πnw] → Linear."""

    def __init__(self, config: NumberConditionerConfig, features_dim: int, out_dim: int) -> None:
        super().__init__()
        self.min_value = config.min_value
        self.max_value = config.max_value
        self.freqs = nn.Parameter(torch.empty(features_dim // 2))
        self.proj = nn.Linear(features_dim + 1, out_dim)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """(B,) → (B, 1, out_dim)."""
        values = values.to(self.freqs.dtype).clamp(self.min_value, self.max_value)
        n = ((values - self.min_value) / (self.max_value - self.min_value))[:, None]
        angles = 2 * math.pi * n * self.freqs[None, :]
        return self.proj(torch.cat((n, angles.sin(), angles.cos()), dim=-1)).unsqueeze(1)


class NumberConditioners(nn.ModuleDict):
    """One NumberConditioner per configured id (e.g. seconds_start, seconds_total)."""

    def __init__(self, config: ConditioningConfig) -> None:
        super().__init__(
            {n.id: NumberConditioner(n, config.number_features_dim, config.cond_dim) for n in config.numbers}
        )


class T5TextEncoder(nn.Module):
    """transformers' T5 encoder; padded positions of the output are exact zeros (output × mask).

    `skips_padding` (off by default; the CPU's eager fast path turns it on): run T5 only over the
    positions up to the last one any prompt uses, the rest of the output zeros as the mask makes
    them anyway. The used tokens' outputs are the same maths (masked keys weigh exactly 0; T5's
    position bias is relative). It reads the mask on the host, so a CUDA graph or an export
    cannot take it.
    """

    def __init__(self, t5_encoder: nn.Module) -> None:
        super().__init__()
        self.t5 = t5_encoder
        self.skips_padding = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.skips_padding:
            return self._encode(input_ids, attention_mask)
        used_columns = attention_mask.any(0).nonzero()
        used = int(used_columns.max()) + 1 if len(used_columns) else 1
        hidden = self._encode(input_ids[:, :used], attention_mask[:, :used])
        return F.pad(hidden, (0, 0, 0, input_ids.shape[-1] - used))

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.t5(
            input_ids=input_ids, attention_mask=self._full_mask(attention_mask)
        ).last_hidden_state
        return hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)

    def _full_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The (B, 1, L, L) mask transformers would build from the (B, L) one, built here: given
        the 2D mask, transformers reads it on the host (`mask.all()`, to skip an all-ones mask),
        a sync and a data-dependent branch that a CUDA graph cannot capture. A 4D mask is used
        as given: boolean for SDPA, additive for the eager attention."""
        length = attention_mask.shape[-1]
        keep = attention_mask[:, None, None, :].bool().expand(-1, 1, length, -1)
        if self.t5.config._attn_implementation == "eager":
            dtype = self.t5.dtype
            return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(
                ~keep, torch.finfo(dtype).min
            )
        return keep


def tokenize(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts → (input_ids, attention_mask), each (B, max_length): EOS appended, padded,
    truncated as stable-audio-tools does (`Conditioner.prompt_warnings` names the prompts that
    lose words; the pipeline warns of them at its caller's line)."""

    def encode(texts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokenizer(
            texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )
        return batch["input_ids"], batch["attention_mask"]

    # One token more than the model reads: a prompt that fills it loses words to the truncation.
    # The others' first max_length columns are their tokens as the model reads them.
    ids, mask = encode(list(prompts), max_length + 1)
    ids, mask, longer = ids[:, :max_length], mask[:, :max_length], mask[:, max_length].bool()
    if longer.any():
        rows = longer.nonzero().flatten().tolist()
        # Truncated by the tokenizer itself, which keeps the EOS its template appends.
        ids[rows], mask[rows] = encode([prompts[r] for r in rows], max_length)
    return ids, mask


def long_prompt_warning(prompt: str, max_length: int) -> str:
    return (
        f"the prompt {prompt[:40]!r}… is over {max_length} T5 tokens; the model reads the first "
        f"{max_length} and ignores the rest"
    )


def assemble_conditioning(
    config: ConditioningConfig, tokens: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-condition tokens → (context (B, S, D), global (B, len(global_ids)·D)).

    `tokens` maps each id to (B, n, D): the masked T5 output for "prompt", one token per number.
    """
    missing = [i for i in (*config.cross_attention_ids, *config.global_ids) if i not in tokens]
    if missing:
        raise ConfigError(f"conditioning is missing {missing}; give a value for each")
    context = torch.cat([tokens[i] for i in config.cross_attention_ids], dim=1)
    global_cond = torch.cat([tokens[i][:, 0] for i in config.global_ids], dim=-1)
    return context, global_cond


class Conditioner(nn.Module):
    """Prompts and numbers → (context, global condition), as the reference conditions the DiT."""

    def __init__(
        self,
        config: ConditioningConfig,
        numbers: NumberConditioners,
        text_encoder: T5TextEncoder,
        tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        super().__init__()
        self.config = config
        self.numbers = numbers
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        # A fast tokenizer keeps each call's truncation and padding on itself: calls from several
        # threads (a server's checks beside a run) took each other's lengths.
        self.tokenizing = threading.Lock()

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with self.tokenizing:
            return tokenize(self.tokenizer, prompts, self.config.t5_max_length)

    def prompt_warnings(self, prompts: Sequence[str]) -> list[str]:
        """One warning per prompt the model will not read whole (over T5's length), before any
        work: what `tokenize` warns of when the request runs."""
        length = self.config.t5_max_length
        with self.tokenizing:
            ids = self.tokenizer(list(prompts), truncation=True, max_length=length + 1)["input_ids"]
        return [
            long_prompt_warning(p, length)
            for p, tokens in zip(prompts, ids, strict=True)
            if len(tokens) > length
        ]

    def number_tokens(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {i: self.numbers[i](values[i]) for i in self.numbers if i in values}

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, values: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and number values already on the device → (context, global): device work only."""
        tokens = self.number_tokens(values)
        text = self.text_encoder(input_ids, attention_mask)
        tokens[PROMPT_ID] = text.to(next(self.numbers.parameters()).dtype)
        return assemble_conditioning(self.config, tokens)
