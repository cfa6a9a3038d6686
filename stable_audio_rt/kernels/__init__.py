"""Triton kernels (attention with fused partial RoPE, GQA cross-attention, Snake) and their ops."""
