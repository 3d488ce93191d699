"""Triton kernels (``@triton.jit`` functions and their launchers) behind slotvlm's fused ops."""
