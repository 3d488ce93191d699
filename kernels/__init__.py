"""Triton kernels of slotvlm and their launchers (grid, block sizes, contiguity).

Nothing here registers autograd or custom ops: that is ``slotvlm/ops/fused.py`` (slot attention)
and ``slotvlm/ops/scan.py`` (selective scan). Importing this
package imports triton; on CPU the kernels run only under ``TRITON_INTERPRET=1``.
"""
