"""The machine's name as benchmark and experiment CSV rows record it (shared by ``bench/`` and
:mod:`slotvlm.discover`)."""
from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """``CPU <model name from /proc/cpuinfo> x<cores>`` (the platform's processor name elsewhere)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {model} x{os.cpu_count()}"
