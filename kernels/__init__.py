"""Triton kernels of slotvlm and their launchers (grid, block sizes, contiguity).

Nothing here registers autograd or custom ops: that is ``slotvlm/ops/fused.py`` (slot attention)
and ``slotvlm/ops/scan.py`` (selective scan). Importing this
package imports triton; on CPU the kernels run only under ``TRITON_INTERPRET=1``.
"""


def __getattr__(name):
    """``kernels.TRAFFIC``: kernel name -> fn(grid, args) -> (bytes read, bytes written, FLOPs), the
    per-launch HBM model of every kernel that documents one (imports the kernel modules)."""
    if name == "TRAFFIC":
        from . import layer_norm, slot_attention_deferred

        return {**slot_attention_deferred.TRAFFIC, **layer_norm.TRAFFIC}
    raise AttributeError(name)
