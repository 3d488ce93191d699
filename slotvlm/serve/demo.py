"""A gradio demo of a Slot-VLM: upload (or pick) a video, chat about it with streamed answers, and
see beside the chat what the slots of that video attend to — the picture of ``slotvlm visualize``
(:func:`slotvlm.model.visualize.visualize_video`).

    from slotvlm import SlotVLM
    from slotvlm.serve.demo import build_demo
    build_demo(SlotVLM.from_pretrained("runs/s2")).launch(server_name="127.0.0.1")

The video is encoded once when it is loaded (its tokens are kept in a small LRU cache keyed by
content hash, the server's :class:`~slotvlm.serve.engine.VideoCache`); each question only runs the
LLM. Answers stream token by token through :func:`slotvlm.serve.generation.decode`.
"""
from __future__ import annotations

import hashlib
import os
import queue
import tempfile
import threading

__all__ = ["build_demo"]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _text(content) -> str:
    """A chat message's content (a string, or gradio's list of parts) as plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text(c) for c in content)
    return "" if content is None else str(content)


def _turns(history) -> list[tuple[str, str]]:
    """gradio messages → completed ``(question, answer)`` turns."""
    turns, question = [], None
    for m in history or []:
        role, text = (m.get("role"), _text(m.get("content"))) if isinstance(m, dict) else (m.role, _text(m.content))
        if role == "user":
            question = text
        elif role == "assistant" and question is not None:
            turns.append((question, text))
            question = None
    return turns


def build_demo(model, *, examples: list[str] | None = None, figure_dir: str | None = None,
               cache_mb: float = 64.0, title: str = "Slot-VLM"):
    """The gradio ``Blocks`` app for ``model`` (a :class:`slotvlm.SlotVLM`); not launched.

    Args:
        examples: video files offered to pick from (``gr.Examples``).
        figure_dir: where the slot pictures are written (default: a temporary folder).
        cache_mb: bound of the video-token cache.
    """
    import gradio as gr  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from ..model.visualize import visualize_video  # noqa: PLC0415
    from .engine import VideoCache  # noqa: PLC0415
    from .generation import GenRequest, decode  # noqa: PLC0415

    model.eval()
    lock = threading.Lock()  # one model, used by one event at a time
    cache = VideoCache(int(cache_mb * 2**20))
    figure_dir = figure_dir or tempfile.mkdtemp(prefix="slotvlm-demo-")

    def tokens_for(path: str):
        key = _sha256(path)
        t = cache.get(key)
        if t is None:
            with lock, torch.no_grad():
                t = model.encode_video([model.load_video(path)])[0]
            cache.put(key, t)
        return key, t

    def on_video(path):
        """A new video: encode it, draw its slots, start a new chat."""
        if not path:
            return None, [], None, gr.update(interactive=False)
        try:
            key, _ = tokens_for(path)
            out = os.path.join(figure_dir, f"slots-{key[:16]}.png")
            if not os.path.isfile(out):
                with lock:
                    visualize_video(model, path, out)
        except ValueError as exc:  # not a decodable video, no slot connector, ...
            raise gr.Error(str(exc)) from None
        return out, [], key, gr.update(interactive=True)

    def respond(message, history, path, key, max_new_tokens, temperature):
        message = (message or "").strip()
        if not path:
            raise gr.Error("Upload or pick a video first.")
        if not message:
            raise gr.Error("Type a question about the video.")
        _, tokens = tokens_for(path)
        turns = _turns(history)
        history = list(history or []) + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield history, ""
        pieces: queue.Queue = queue.Queue()
        req = GenRequest(tokens, message, turns, max_tokens=int(max_new_tokens), temperature=float(temperature),
                         seed=0, on_text=pieces.put)
        box = {}

        def work():
            try:
                with lock:
                    box["result"] = decode(model, [req])[0]
            except Exception as exc:  # shown in the UI, the app keeps running
                box["error"] = exc
            finally:
                pieces.put(None)

        threading.Thread(target=work, daemon=True).start()
        answer = ""
        while (piece := pieces.get()) is not None:
            answer += piece
            history[-1] = {"role": "assistant", "content": answer}
            yield history, ""
        if "error" in box:
            raise gr.Error(f"generation failed: {box['error']}")
        history[-1] = {"role": "assistant", "content": box["result"].text}
        yield history, ""

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}: chat about a video, and see its slots\n"
                    "Object slots: one row per sampled frame (time in seconds) — the frame, its patches coloured by "
                    "the winning slot, then one column per slot's attention. Event slots: per pooled position, "
                    "each slot's attention over time.")
        key = gr.State(None)
        with gr.Row():
            with gr.Column(scale=5):
                video = gr.Video(label="Video", sources=["upload"], elem_id="video", height=240)
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[video], label="Pick a video")
                chat = gr.Chatbot(label="Chat", elem_id="chat", height=460, render_markdown=False)
                with gr.Row():
                    box = gr.Textbox(placeholder="Ask about the video and press Enter", show_label=False,
                                     elem_id="question", scale=5, interactive=False)
                    send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
                with gr.Accordion("Generation", open=False):
                    max_new = gr.Slider(1, 512, value=64, step=1, label="max new tokens")
                    temp = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="temperature (0 = greedy)")
                clear = gr.Button("New chat", elem_id="clear")
            with gr.Column(scale=4):
                slots = gr.Image(label="Slots of this video", type="filepath", elem_id="slots", interactive=False,
                                 height=720)
        video.change(on_video, [video], [slots, chat, key, box])
        inputs = [box, chat, video, key, max_new, temp]
        box.submit(respond, inputs, [chat, box])
        send.click(respond, inputs, [chat, box])
        clear.click(lambda: [], None, [chat])
    return demo
