"""sa-bench: real-time factor per stage, the machine's GEMM floor, quality against the fp32
torch reference, and diffusers side by side."""
