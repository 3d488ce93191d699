"""Conversation templates.

``conv_template="auto"`` (the default) uses the tokenizer's own chat template
(``tokenizer.apply_chat_template``) when it has one, and otherwise Vicuna v1, the template of
Slot-VLM, Video-ChatGPT and the LLaVA-style checkpoints (whose tokenizers carry no template)::

    "<system> USER: <video>\\n<question> ASSISTANT: <answer></s>"

``"vicuna_v1"`` forces Vicuna v1, ``"tokenizer"`` requires the tokenizer's template.

**System prompt.** ``prompt(..., system=...)`` replaces the template's default system prompt
(Vicuna v1's fixed sentence; none for a tokenizer template) for that conversation. A tokenizer
template receives it as a ``{"role": "system"}`` message; if the template refuses a system role
(some do, e.g. by raising "System role not supported"), the documented fallback puts the system
text, then a blank line, before the first user message.

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
    includes_bos: bool = False  # the BOS token is added by the model, not written in the text
    answer_prefix: str = " "  # the text between "ASSISTANT:" and the reply, as prompt() writes earlier turns

    def prompt(self, question: str, history: list[tuple[str, str]] | None = None, system: str | None = None) -> str:
        """The text before the answer: earlier turns (``[(question, answer)]``) then ``question``.

        The video placeholder is put at the start of the first user turn unless a question
        already contains ``VIDEO_TOKEN``. ``system`` replaces the default system prompt.
        """
        turns = list(history or []) + [(question, None)]
        has_video = any(VIDEO_TOKEN in q for q, _ in turns)
        text = (self.system if system is None else system) + self.sep
        for i, (q, a) in enumerate(turns):
            if i == 0 and not has_video:
                q = f"{VIDEO_TOKEN}\n{q}"
            text += f"{self.roles[0]}: {q}{self.sep}{self.roles[1]}:"
            if a is not None:
                text += f"{self.answer_prefix}{a}{self.sep2}"
        return text


class ChatTemplate:
    """The tokenizer's chat template (jinja, rendered by ``apply_chat_template``) with the same
    ``prompt(question, history)`` interface as :class:`Conversation`."""

    name = "tokenizer"
    answer_prefix = ""  # the generation prompt ends where the assistant's reply begins

    def __init__(self, tokenizer, system: str | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("conv_template='tokenizer' but the tokenizer has no chat_template")
        self.tokenizer = tokenizer
        self.system = system
        bos = getattr(tokenizer, "bos_token", None)
        probe = self._render([{"role": "user", "content": "x"}])
        self.includes_bos = bool(bos) and probe.startswith(bos)

    def _render(self, messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt(self, question: str, history: list[tuple[str, str]] | None = None, system: str | None = None) -> str:
        turns = list(history or []) + [(question, None)]
        has_video = any(VIDEO_TOKEN in q for q, _ in turns)
        system = self.system if system is None else system
        messages = []
        for i, (q, a) in enumerate(turns):
            if i == 0 and not has_video:
                q = f"{VIDEO_TOKEN}\n{q}"
            messages.append({"role": "user", "content": q})
            if a is not None:
                messages.append({"role": "assistant", "content": a})
        if not system:
            return self._render(messages)
        try:
            return self._render([{"role": "system", "content": system}, *messages])
        except Exception:  # noqa: BLE001  (jinja's TemplateError, or whatever the template raises)
            # the template takes no system role: the documented fallback (module docstring)
            first = {**messages[0], "content": f"{system}\n\n{messages[0]['content']}"}
            return self._render([first, *messages[1:]])


def reply_token_ids(tokenizer, prompt: str, answer: str, prefix: str = " ") -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of the reply ``answer`` as the tokenizer splits the whole turn
    ``prompt + prefix + answer`` (``prefix``: the template's text between the assistant role and its
    reply, :attr:`Conversation.answer_prefix`; a space for Vicuna v1). No special tokens are added.

    Tokenised on its own, a reply loses the word boundary it has in the conversation: a byte-level
    BPE (GPT-2, Llama 3, Qwen) splits ``"green"`` into ``g`` + ``reen``, while the same word in the
    prompt, and in the template's earlier turns, is the single token `` green``. Where the tokenizer
    merges across the boundary (the joint ids do not start with the prompt's), the reply falls back
    to ``prefix + answer`` tokenised alone."""
    ids_prompt = tokenizer(prompt, add_special_tokens=False).input_ids
    joint = tokenizer(prompt + prefix + answer, add_special_tokens=False).input_ids
    if len(joint) > len(ids_prompt) and joint[: len(ids_prompt)] == ids_prompt:
        return ids_prompt, joint[len(ids_prompt):]
    return ids_prompt, tokenizer(prefix + answer, add_special_tokens=False).input_ids


TEMPLATES = {"vicuna_v1": Conversation("vicuna_v1", VICUNA_V1_SYSTEM)}
CHOICES = ("auto", "tokenizer", *TEMPLATES)


def get_template(name: str, tokenizer=None):
    """The prompt template ``name`` (see the module docstring); ``tokenizer`` for "auto"/"tokenizer"."""
    if name not in CHOICES:
        raise ValueError(f"conv_template must be one of {sorted(CHOICES)}, got {name!r}")
    if name == "tokenizer" or (name == "auto" and getattr(tokenizer, "chat_template", None)):
        return ChatTemplate(tokenizer)
    return TEMPLATES["vicuna_v1" if name == "auto" else name]
