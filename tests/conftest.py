"""Test setup. Triton kernels run on CPU under the interpreter, which must be switched on before
triton is first imported."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("SLOTVLM_BACKEND", None)  # tests choose backends explicitly

import pytest  # noqa: E402
import torch  # noqa: E402

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
