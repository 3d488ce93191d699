"""Serving a Slot-VLM: an OpenAI-compatible chat-completions server (``slotvlm serve``) and a
gradio demo (``slotvlm demo``).

Needs the ``serve`` extra (``pip install "slotvlm[serve]"``: fastapi, uvicorn, prometheus-client)
for the server and the ``demo`` extra (gradio) for the demo. Example::

    import uvicorn
    from slotvlm import SlotVLM
    from slotvlm.serve import ServeConfig, create_app

    model = SlotVLM.from_pretrained("runs/s2")
    uvicorn.run(create_app(model, ServeConfig(served_model_name="s2")), host="127.0.0.1", port=8000)
"""
from __future__ import annotations

__all__ = ["ServeConfig", "create_app", "decode", "GenRequest"]


def __getattr__(name):
    if name in ("ServeConfig", "create_app"):
        from . import app  # noqa: PLC0415  (fastapi only when the server is used)

        return getattr(app, name)
    if name in ("decode", "GenRequest"):
        from . import generation  # noqa: PLC0415

        return getattr(generation, name)
    raise AttributeError(name)
