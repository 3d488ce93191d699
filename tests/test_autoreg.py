"""``import slotvlm`` alone registers Slot-VLM with transformers' Auto classes (issue 27), in any
import order, without importing transformers itself. Each case runs in a fresh interpreter (the
registration is process state); a failed registration is a RuntimeWarning, turned into an error."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slotvlm.testing import make_tiny_slotvlm

REPO = Path(__file__).resolve().parents[1]

REPORT = """
import json
from transformers import AutoConfig, AutoModel
m = AutoModel.from_pretrained(FOLDER)
print(json.dumps({"config": type(AutoConfig.for_model("slotvlm")).__name__, "model": type(m).__name__,
                  "same_class": type(m) is slotvlm.SlotVLM}))
"""

ORDERS = {
    # slotvlm first; transformers' Auto modules load later (the finder registers then)
    "slotvlm first": "import slotvlm\n",
    # transformers' model code first (CLIP pulls modeling_utils, which loads the Auto config module
    # half-way through its own import), then slotvlm: registration happens at import slotvlm
    "transformers first": "from transformers import AutoModel, CLIPVisionModel\nimport slotvlm\n",
    # slotvlm first, then a CLIP import: configuration_auto finishes inside modeling_utils' import
    "slotvlm, then CLIP": "import slotvlm\nfrom transformers import CLIPVisionModel\n",
    # slotvlm first, then only the causal-LM Auto class (modeling_auto without modeling_utils)
    "slotvlm, then AutoModelForCausalLM": "import slotvlm\nfrom transformers import AutoModelForCausalLM\n",
}


def _run(code: str, timeout: int = 300) -> dict:
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_slotvlm(tmp_path_factory.mktemp("autoreg"))


@pytest.mark.parametrize("order", list(ORDERS))
def test_import_slotvlm_registers_auto_classes(order, folder):
    got = _run(ORDERS[order] + f"FOLDER = {folder!r}\n" + REPORT)
    assert got == {"config": "SlotVLMConfig", "model": "SlotVLM", "same_class": True}


def test_import_slotvlm_does_not_import_transformers():
    """The registration hook costs ``import slotvlm`` nothing: transformers (and the model code)
    stay unimported until the user imports them; then ``AutoConfig.for_model`` works (the issue's
    one-liner)."""
    code = textwrap.dedent("""
        import json, sys
        import slotvlm
        before = sorted(m for m in ("transformers", "slotvlm.model", "triton") if m in sys.modules)
        import transformers
        cfg = transformers.AutoConfig.for_model("slotvlm")
        print(json.dumps({"before": before, "type": type(cfg).__name__, "model_type": cfg.model_type}))
    """)
    assert _run(code) == {"before": [], "type": "SlotVLMConfig", "model_type": "slotvlm"}
