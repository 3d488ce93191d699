"""Counting real launches of Triton kernels in tests (shared by the kernel and SlotSSM tests)."""


class LaunchCounter:
    """Counts real launches of a @triton.jit kernel (possibly wrapped by @triton.heuristics)."""

    def __init__(self, monkeypatch, kernel):
        self.n = 0
        # the JITFunction / InterpretedFunction itself, or the one under the heuristics wrapper
        jit = kernel.fn if hasattr(getattr(kernel, "fn", None), "run") else kernel
        run = jit.run

        def counting_run(*args, **kwargs):
            self.n += 1
            return run(*args, **kwargs)

        monkeypatch.setattr(jit, "run", counting_run)
