"""Sampling: one sampler per model objective (its defaults, checks, schedule and draws), the
step over the sampler state, the schedules, the noise and the guidance."""
