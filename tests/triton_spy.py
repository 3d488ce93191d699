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


class OpCounter:
    """Counts, while active, every real Triton launch (any kernel) and every aten op that runs a
    device kernel (views, aliases and allocations excluded) — a CPU stand-in for the number of
    kernels one call issues on a GPU. Custom ops (``slotvlm::*``) are counted by their launches.

    ``with OpCounter() as c: ...`` then ``c.launches``, ``c.aten`` (a Counter by op name), ``c.total``.
    """

    # allocations and metadata-only ops: no device kernel
    FREE = {
        "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
        "_to_copy_noop", "alias", "view", "_unsafe_view", "_reshape_alias", "reshape", "t", "transpose",
        "permute", "unsqueeze", "squeeze", "expand", "slice", "select", "as_strided", "split", "unbind",
        "unflatten", "flatten", "chunk", "split_with_sizes", "narrow", "is_same_size", "sym_size",
        "sym_stride", "sym_numel", "set_", "resize_",
    }

    def __init__(self):
        import collections

        self.launches = 0
        self._in_kernel = 0
        self.kernels = collections.Counter()
        self.aten = collections.Counter()

    @property
    def total(self) -> int:
        return self.launches + sum(self.aten.values())

    def __enter__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        counter = self
        self._patched = []
        for cls in (InterpretedFunction, JITFunction):
            run = cls.run

            def counting_run(jit, *args, _run=run, **kwargs):
                counter.launches += 1
                counter.kernels[getattr(jit, "__name__", None) or jit.fn.__name__] += 1
                counter._in_kernel += 1  # the interpreter's own host copies are not device work
                try:
                    return _run(jit, *args, **kwargs)
                finally:
                    counter._in_kernel -= 1

            cls.run = counting_run
            self._patched.append((cls, run))

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                ns = func.namespace
                name = func._schema.name.split("::")[-1]
                if ns == "aten" and name not in counter.FREE and not func.is_view and not counter._in_kernel:
                    counter.aten[name] += 1
                if ns == "slotvlm":  # run the op's Python body with this mode on: count what it issues
                    opdef = torch._library.custom_ops.OPDEFS[func._schema.name]
                    with self:
                        return opdef._init_fn(*args, **(kwargs or {}))
                return func(*args, **(kwargs or {}))

        self._mode = Mode()
        self._mode.__enter__()
        self._torch = torch
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        for cls, run in self._patched:
            cls.run = run
        return False
