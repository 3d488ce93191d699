"""Conversation templates. Slot-VLM (like Video-ChatGPT) uses Vicuna v1:

    "<system> USER: <video>\\n<question> ASSISTANT: <answer></s>"

``VIDEO_TOKEN`` marks where the video embeddings go; it is never tokenised, the model splits the
prompt text on it and inserts the ``[L, H]`` video embeddings there.
"""
from __future__ import annotations

from dataclasses import dataclass

VIDEO_TOKEN = "<video>"

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Conversation:
    """A two-role chat template: ``system + sep + ROLE0: msg + sep + ROLE1: msg + sep2 ...``."""

    name: str
    system: str
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"

    def prompt(self, question: str, history: list[tuple[str, str]] | None = None) -> str:
        """The text before the answer: earlier turns (``[(question, answer)]``) then ``question``.

        The video placeholder is put at the start of the first user turn unless a question
        already contains ``VIDEO_TOKEN``.
        """
        turns = list(history or []) + [(question, None)]
        has_video = any(VIDEO_TOKEN in q for q, _ in turns)
        text = self.system + self.sep
        for i, (q, a) in enumerate(turns):
            if i == 0 and not has_video:
                q = f"{VIDEO_TOKEN}\n{q}"
            text += f"{self.roles[0]}: {q}{self.sep}{self.roles[1]}:"
            if a is not None:
                text += f" {a}{self.sep2}"
        return text


TEMPLATES = {"vicuna_v1": Conversation("vicuna_v1", VICUNA_V1_SYSTEM)}


def get_template(name: str) -> Conversation:
    if name not in TEMPLATES:
        raise ValueError(f"conv_template must be one of {sorted(TEMPLATES)}, got {name!r}")
    return TEMPLATES[name]
