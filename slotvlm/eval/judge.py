"""The LLM judge for open-ended video QA (the Video-ChatGPT protocol), made dependable.

A judge model reads (question, correct answer, predicted answer) and replies with a dict string
``{'pred': 'yes'|'no', 'score': 0..5}``. Accuracy is yes / (yes + no) and the score is the mean of
the scores. Everything that can go wrong is bounded and recorded:

- replies are parsed leniently (Python-literal dicts, JSON, code fences, text around the dict);
  an unparseable or ambiguous (conflicting verdicts) reply is asked again at most
  ``max_retries`` times, then the question is counted as ``failed`` — never dropped, never
  retried forever;
- HTTP timeouts (a total deadline per request), dropped connections, 429 and 5xx are retried
  with bounded exponential backoff; a refused connection, a redirect or HTTP 401/403/404 stop
  the run at once (no credentials ever follow a redirect);
- every verdict is appended (and flushed) to ``DIR/verdicts.jsonl`` as soon as it arrives, so an
  interrupted run resumes where it stopped; the cache is tied to the pinned judge model name;
- requests run on a bounded thread pool.

Backends: :class:`OpenAIChatJudge` (any OpenAI-compatible ``/chat/completions`` endpoint, plain
HTTP(S) through ``httpx``, temperature 0) and :class:`LocalJudge` (a transformers causal LM).
"""
from __future__ import annotations

import ast
import asyncio
import concurrent.futures as cf
import datetime as _dt
import hashlib
import http
import json
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Iterable, Protocol

from ._jsonl import JsonlAppender, iter_jsonl, read_jsonl

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# A dated snapshot: undated aliases move under you and the numbers drift with them.
DEFAULT_JUDGE_MODEL = "gpt-3.5-turbo-0125"
VERDICTS_FILE = "verdicts.jsonl"

SYSTEM_PROMPT = (
    "You grade answers to questions about videos. You are given a question, the correct answer "
    "and a predicted answer. Decide whether the predicted answer means the same as the correct "
    "answer. Judge the meaning, not the wording: synonyms, paraphrases and extra detail that does "
    "not contradict the correct answer still count as a match; a wrong, contradicting or missing "
    "answer does not. Then rate how well the prediction matches the correct answer with an "
    "integer from 0 (not at all) to 5 (perfectly)."
)

USER_TEMPLATE = (
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {pred}\n\n"
    "Reply with a Python dictionary string and nothing else, for example {{'pred': 'yes', "
    "'score': 4}}. 'pred' is 'yes' when the predicted answer matches the correct answer and 'no' "
    "otherwise; 'score' is an integer from 0 to 5."
)

CORRECTION = (
    "That reply could not be read. Answer again with only the dictionary, exactly in the form "
    "{'pred': 'yes', 'score': 4} or {'pred': 'no', 'score': 1}."
)

# Identifies the protocol text in results.json, so that numbers from different prompts are
# never compared by mistake.
PROMPT_VERSION = hashlib.sha1((SYSTEM_PROMPT + USER_TEMPLATE).encode()).hexdigest()[:12]


class VerdictError(ValueError):
    """A judge reply that does not contain a valid ``{'pred', 'score'}`` verdict."""


class JudgeRequestError(RuntimeError):
    """The judge could not be reached (or kept failing) for one question after all retries."""


class JudgeConfigError(RuntimeError):
    """A failure no retry can fix (bad key, unknown model, wrong URL): the run stops."""


def build_messages(question: str, answer: str, pred: str) -> list[dict]:
    """The chat messages of the judge protocol for one prediction."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": USER_TEMPLATE.format(question=question, answer=answer, pred=pred),
        },
    ]


# ------------------------------------------------------------------------------------ parsing

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*")
_PRED_RE = re.compile(r"""['"]?pred['"]?\s*[:=]\s*['"]?\s*(yes|no)\b""", re.IGNORECASE)
_SCORE_RE = re.compile(r"""['"]?score['"]?\s*[:=]\s*['"]?\s*(-?\d+(?:\.\d+)?)""", re.IGNORECASE)


def _brace_spans(text: str) -> Iterable[str]:
    """Every balanced ``{...}`` substring, outermost first, left to right."""
    depth, start = 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                yield text[start : i + 1]


def _validate(obj) -> tuple[str, float]:
    if not isinstance(obj, dict):
        raise VerdictError(f"not a dict: {obj!r:.200}")
    low = {str(k).strip().lower(): v for k, v in obj.items()}
    if "pred" not in low or "score" not in low:
        raise VerdictError(f"dict lacks 'pred' or 'score': {obj!r:.200}")
    pred, score = low["pred"], low["score"]
    if not isinstance(pred, str) or pred.strip().lower() not in ("yes", "no"):
        raise VerdictError(f"'pred' must be 'yes' or 'no', got {pred!r:.100}")
    if isinstance(score, str):
        try:
            score = float(score.strip())
        except ValueError:
            raise VerdictError(f"'score' is not a number: {score!r:.100}") from None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise VerdictError(f"'score' is not a number: {score!r:.100}")
    if not 0 <= score <= 5:
        raise VerdictError(f"'score' must be within 0..5, got {score!r}")
    return pred.strip().lower(), float(score)


def parse_verdict(reply: str) -> tuple[str, float]:
    """``(pred, score)`` from a judge reply, ``pred`` in {"yes", "no"} and ``score`` in [0, 5].

    Accepts Python-literal dicts (``{'pred': 'yes', 'score': 4}``), JSON, either inside code
    fences or surrounded by other text, and as a last resort ``pred: yes ... score: 4`` spelled
    out. A reply that states more than one verdict (two dicts that disagree, or ``pred: no``
    in the text next to a dict saying yes) is ambiguous and rejected, never guessed. Raises
    :class:`VerdictError` (a ``ValueError``) otherwise.
    """
    if not isinstance(reply, str):
        raise VerdictError(f"reply must be a string, got {type(reply).__name__}")
    text = _FENCE.sub("", reply)
    problem = None
    found: list[tuple[str, float]] = []
    for span in _brace_spans(text):
        for loads in (ast.literal_eval, json.loads):
            try:
                obj = loads(span)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            try:
                found.append(_validate(obj))
            except VerdictError as e:
                problem = problem or e
            break
    preds = {m.group(1).lower() for m in _PRED_RE.finditer(text)}
    scores = set()
    for m in _SCORE_RE.finditer(text):
        try:
            scores.add(float(m.group(1)))
        except ValueError:
            pass
    if found:
        preds |= {p for p, _ in found}
        scores |= {s for _, s in found}
        if len(preds) > 1 or len(scores) > 1:
            raise VerdictError(f"ambiguous reply, it states conflicting verdicts: {reply!r:.300}")
        return found[0]
    if preds and scores:
        if len(preds) > 1 or len(scores) > 1:
            raise VerdictError(f"ambiguous reply, it states conflicting verdicts: {reply!r:.300}")
        return _validate({"pred": preds.pop(), "score": scores.pop()})
    raise problem or VerdictError(f"no verdict found in reply {reply!r:.300}")


# ----------------------------------------------------------------------------------- backends


class Judge(Protocol):
    """What the runner needs from a backend."""

    name: str  # the pinned judge model, recorded with every verdict

    def complete(self, messages: list[dict]) -> tuple[str, str | None]:
        """Reply text and the model name the server says it used (None when unknown)."""


class JudgeUnreachableError(JudgeConfigError):
    """The judge endpoint refused the connection (or its host does not resolve): nothing is
    listening there, so the run stops at once instead of retrying every question."""


# Replies larger than this are not chat completions of a short verdict; reading stops there.
MAX_RESPONSE_BYTES = 4 << 20


class OpenAIChatJudge:
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style proxies, vLLM,
    llama.cpp server, ...), over HTTP(S) with ``httpx``.

    Behaviour on the wire (see docs/eval.md):

    - **Deadline**: ``timeout`` is the *total* time of one request (connecting, sending, waiting
      and reading the whole reply); a server that trickles bytes is cut off when it runs out.
    - **Retries**: after a timeout, a dropped connection, HTTP 429 or 5xx, at most
      ``max_retries`` more requests, with exponential backoff from ``backoff`` seconds capped at
      ``max_backoff`` (a ``Retry-After`` header is honoured within the cap). Then the question
      counts as failed (``reason == "request"``) and a rerun asks it again.
    - **Fails fast**: a refused connection or unknown host raises :class:`JudgeUnreachableError`;
      HTTP 401/403/404 and redirects raise :class:`JudgeConfigError`; both stop the run.
    - **Credentials**: redirects are never followed, so the ``Authorization`` header only ever
      goes to the origin of ``base_url``. Error messages never include a response body (a
      hostile or misconfigured server may echo the key).

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``
            (``/chat/completions`` is appended unless already there).
        model: the pinned model name sent with every request and recorded with every verdict.
        api_key: bearer token; defaults to ``$OPENAI_API_KEY`` (may be empty for local servers).
        timeout: total seconds per HTTP request (> 0).
        max_retries, backoff, max_backoff: see above (>= 0).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_JUDGE_MODEL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_tokens: int = 64,
    ):
        if not isinstance(base_url, str) or not re.match(r"^https?://[^/?#\s]+", base_url):
            raise ValueError(f"base_url must start with http:// or https:// and a host, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        for name, v in (("timeout", timeout), ("backoff", backoff), ("max_backoff", max_backoff)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {v!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.name = model
        self.api_key = os.environ.get("OPENAI_API_KEY", "") if api_key is None else api_key
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_tokens = max_tokens
        self._ssl = None  # built once (loading the CA bundle is slow), outside any deadline
        self._ssl_lock = threading.Lock()

    def _ssl_context(self):
        import httpx  # noqa: PLC0415

        with self._ssl_lock:
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            return self._ssl

    async def _post(self, body: bytes) -> tuple[int, dict, bytes]:
        import httpx  # noqa: PLC0415

        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        # httpx's own timeouts are per operation; the total deadline is the wait_for around this.
        async with httpx.AsyncClient(follow_redirects=False, trust_env=True, timeout=self.timeout,
                                     verify=self._ssl) as client:
            async with client.stream("POST", self.url, content=body, headers=headers) as resp:
                data = bytearray()
                if resp.status_code == 200:
                    async for chunk in resp.aiter_bytes():
                        data += chunk
                        if len(data) > MAX_RESPONSE_BYTES:
                            raise ValueError(f"reply larger than {MAX_RESPONSE_BYTES} bytes")
                return resp.status_code, dict(resp.headers), bytes(data)

    def _request(self, body: bytes) -> tuple[int, dict, bytes]:
        """One HTTP request under the total deadline: ``(status, headers, body)``."""
        async def bounded():
            return await asyncio.wait_for(self._post(body), self.timeout)

        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: no event loop in this thread
            return asyncio.run(bounded())
        with cf.ThreadPoolExecutor(1) as pool:  # called from async code (e.g. a notebook)
            return pool.submit(asyncio.run, bounded()).result()

    def complete(self, messages: list[dict]) -> tuple[str, str | None]:
        import httpx  # noqa: PLC0415

        body = json.dumps(
            {
                "model": self.name,
                "messages": messages,
                "temperature": 0,
                "max_tokens": self.max_tokens,
            }
        ).encode("utf-8")
        if self.url.startswith("https://"):
            self._ssl_context()
        last = None
        for attempt in range(self.max_retries + 1):
            wait = None
            try:
                status, headers, raw = self._request(body)
                if status == 200:
                    data = json.loads(raw.decode("utf-8"))
                    content = data["choices"][0]["message"]["content"]
                    if not isinstance(content, str):
                        raise TypeError(f"message content is {type(content).__name__}")
                    served = data.get("model")
                    return content, served if isinstance(served, str) else None
                what = _status_text(status)
                if 300 <= status < 400:
                    raise JudgeConfigError(
                        f"judge endpoint {self.url} answered {what}, a redirect to "
                        f"{_origin(headers.get('location', ''))}; redirects are not followed (the API key "
                        f"must not go to another server): pass the final URL as --base-url"
                    )
                if status in (401, 403, 404):
                    raise JudgeConfigError(
                        f"judge endpoint {self.url} answered {what} for model {self.name!r} (check "
                        f"--base-url, --judge-model and OPENAI_API_KEY)"
                    )
                if status != 429 and status < 500:
                    raise JudgeRequestError(f"judge endpoint {self.url} answered {what}")
                last = what
                wait = _retry_after(headers)
            except httpx.ConnectError as e:
                raise JudgeUnreachableError(
                    f"cannot connect to the judge endpoint {self.url} ({_reason(e)}); is the server "
                    f"running and --base-url right?"
                ) from None
            except (asyncio.TimeoutError, httpx.TimeoutException) as e:
                last = f"no complete reply within the {self.timeout:g} s deadline ({type(e).__name__})"
            except (httpx.HTTPError, OSError) as e:  # dropped connection, protocol error, ...
                last = f"{type(e).__name__}: {_reason(e)}"
            except (ValueError, KeyError, IndexError, TypeError) as e:  # not a chat completion
                last = f"unexpected response ({type(e).__name__})"
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                time.sleep(min(self.max_backoff, wait) if wait is not None else delay)
        raise JudgeRequestError(f"{self.max_retries + 1} requests to {self.url} failed; last: {last}")


def _status_text(status: int) -> str:
    """``HTTP 503 Service Unavailable``: the standard phrase, never text from the server."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _origin(url: str) -> str:
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)", url or "")
    return m.group(1) if m else "another location"


def _reason(e: BaseException) -> str:
    """A short description of a transport error (no response content is ever part of it): the
    operating system's reason when there is one (``Connection refused``)."""
    seen, cur = 0, e
    while cur is not None and seen < 8:
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]


def _retry_after(headers: dict) -> float | None:
    try:
        v = float(headers.get("retry-after"))
    except (TypeError, ValueError):
        return None
    return max(0.0, v) if math.isfinite(v) else None


class LocalJudge:
    """A transformers causal LM as the judge (greedy decoding, so deterministic).

    Args:
        model: hub id or local folder of a causal LM; its chat template is used when it has one,
            otherwise the messages are written as ``role: content`` paragraphs.
        device, dtype: where and how to load it (default: CUDA if available, else CPU; the
            checkpoint's dtype).
    """

    def __init__(self, model: str, *, device=None, dtype=None, max_new_tokens: int = 48):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a hub id or a folder, got {model!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        kwargs = {} if dtype is None else {"dtype": dtype}
        self.model = AutoModelForCausalLM.from_pretrained(model, **kwargs).to(self.device).eval()
        revision = getattr(self.model.config, "_commit_hash", None)
        self.name = f"{model}@{revision}" if revision else model
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one generate at a time

    def _encode(self, messages: list[dict]):
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            enc = tok.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            return enc["input_ids"], enc.get("attention_mask")
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
        enc = tok(text, return_tensors="pt")
        return enc["input_ids"], enc.get("attention_mask")

    def complete(self, messages: list[dict]) -> tuple[str, str | None]:
        import torch

        with self._lock, torch.no_grad():
            ids, mask = self._encode(messages)
            ids = ids.to(self.device)
            mask = None if mask is None else mask.to(self.device)
            pad = self.tokenizer.pad_token_id
            if pad is None:
                pad = self.tokenizer.eos_token_id
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), None


# -------------------------------------------------------------------------------------- runner


def _key(question: str, answer: str, pred: str) -> str:
    """Identifies what was judged: a changed prediction is judged again."""
    return hashlib.sha1(json.dumps([question, answer, pred]).encode("utf-8")).hexdigest()[:16]


def judge_one(judge: Judge, question: str, answer: str, pred: str, *, max_retries: int = 3) -> dict:
    """Judge one prediction. Returns a verdict record (never raises for a bad reply or an
    unreachable judge — those come back with ``status == "failed"`` and a ``reason`` of
    ``"malformed"`` or ``"request"``; :class:`JudgeConfigError` propagates)."""
    messages = build_messages(question, answer, pred)
    record = {"status": "failed", "pred": None, "score": None, "reply": None, "served_model": None}
    for attempt in range(1, max_retries + 2):
        record["attempts"] = attempt
        try:
            reply, served = judge.complete(messages)
        except JudgeRequestError as e:
            return {**record, "reason": "request", "error": str(e)}
        record["reply"], record["served_model"] = reply, served
        try:
            verdict, score = parse_verdict(reply)
        except VerdictError as e:
            record["error"] = str(e)
            # Ask again, showing the judge its unreadable reply and the expected form.
            messages = build_messages(question, answer, pred) + [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": CORRECTION},
            ]
            continue
        return {**record, "status": "ok", "pred": verdict, "score": score, "error": None,
                "reason": None}
    return {**record, "reason": "malformed"}


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Lines of a ``preds.jsonl`` (as written by ``slotvlm predict``): each a JSON object with
    ``question_id`` (a string or an int), ``question``, ``answer`` and ``pred`` (strings; a number
    as ``answer`` is accepted, as QA files have them). A torn last line (a killed ``predict``) is
    skipped with a warning; anything else wrong is a ``ValueError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"predictions file {str(path)!r} does not exist")
    rows, seen = [], {}
    for n, row in iter_jsonl(path, "predictions file"):
        if not isinstance(row, dict):
            raise ValueError(f"{str(path)!r} line {n} must be a JSON object, got {row!r:.200}")
        for k in ("question_id", "question", "answer", "pred"):
            if k not in row or row[k] is None:
                raise ValueError(f"{str(path)!r} line {n} has no {k!r}: {json.dumps(row)[:200]}")
        qid = row["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise ValueError(f"{str(path)!r} line {n}: question_id must be a string or an int, got "
                             f"{type(qid).__name__} {json.dumps(qid)[:100]}")
        if isinstance(row["answer"], (int, float)) and not isinstance(row["answer"], bool):
            row = {**row, "answer": str(row["answer"])}
        for k in ("question", "answer", "pred"):
            if not isinstance(row[k], str):
                raise ValueError(f"{str(path)!r} line {n}: {k} must be a string, got "
                                 f"{type(row[k]).__name__} {json.dumps(row[k])[:100]}")
        row = {**row, "question_id": str(qid)}
        if row["question_id"] in seen:
            raise ValueError(
                f"{str(path)!r} line {n} repeats question_id {row['question_id']!r} "
                f"(first on line {seen[row['question_id']]})"
            )
        seen[row["question_id"]] = n
        rows.append(row)
    return rows


def load_verdicts(path: str | os.PathLike) -> dict[str, dict]:
    """The verdict cache: question_id → latest record. A torn last line (a run killed while
    writing) is ignored."""
    out: dict[str, dict] = {}
    for n, rec in enumerate(read_jsonl(path, "verdict cache"), 1):
        if not isinstance(rec, dict) or "question_id" not in rec:
            raise ValueError(f"verdict cache {str(path)!r} record {n} has no question_id: {rec!r:.200}")
        out[str(rec["question_id"])] = rec
    return out


def summarize(records: list[dict], judge_model: str, **extra) -> dict:
    """``results.json`` content from one verdict record per question."""
    yes = sum(1 for r in records if r["status"] == "ok" and r["pred"] == "yes")
    no = sum(1 for r in records if r["status"] == "ok" and r["pred"] == "no")
    scores = [r["score"] for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    served = sorted({r["served_model"] for r in records if r.get("served_model")})
    return {
        "accuracy": yes / (yes + no) if yes + no else None,
        "score": sum(scores) / len(scores) if scores else None,
        "yes": yes,
        "no": no,
        "failed": len(failed),
        "failed_malformed": sum(1 for r in failed if r.get("reason") == "malformed"),
        "failed_request": sum(1 for r in failed if r.get("reason") == "request"),
        "total": len(records),
        "judge_model": judge_model,
        "served_models": served,
        "temperature": 0,
        "prompt_version": PROMPT_VERSION,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
        "failed_ids": [r["question_id"] for r in failed],
    }


def results_markdown(res: dict) -> str:
    """A small markdown table of a ``results.json``."""
    acc = "n/a" if res["accuracy"] is None else f"{100 * res['accuracy']:.1f}"
    score = "n/a" if res["score"] is None else f"{res['score']:.2f}"
    return (
        "| accuracy (%) | score (0-5) | yes | no | failed | total | judge | date |\n"
        "|---:|---:|---:|---:|---:|---:|---|---|\n"
        f"| {acc} | {score} | {res['yes']} | {res['no']} | {res['failed']} | {res['total']} "
        f"| {res['judge_model']} | {res['date']} |\n"
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_judge(
    preds: str | os.PathLike | list[dict],
    out_dir: str | os.PathLike,
    judge: Judge,
    *,
    concurrency: int = 4,
    max_retries: int = 3,
    retry_failed: bool = True,
    progress: bool = True,
) -> dict:
    """Judge every prediction, resuming from ``out_dir/verdicts.jsonl``, and write
    ``out_dir/results.json`` + ``out_dir/results.md``. Returns the results dict.

    Questions already in the cache (same judge model, same question/answer/prediction) are not
    asked again, except those that failed to reach the judge (``reason == "request"``) and, with
    ``retry_failed`` (the default), those whose replies could not be parsed: a rerun asks exactly
    the questions an earlier run did not judge. ``results["asked"]`` counts this run's questions. A ``KeyboardInterrupt`` stops the run
    with every finished verdict saved.
    """
    from tqdm.auto import tqdm

    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
    source = None
    if not isinstance(preds, list):
        source = str(preds)
        preds = read_predictions(preds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / VERDICTS_FILE
    cache = load_verdicts(cache_path)
    models = {r.get("judge_model") for r in cache.values()}
    if models - {judge.name}:
        raise ValueError(
            f"{str(cache_path)!r} holds verdicts of judge model(s) {sorted(map(str, models))}, "
            f"this run uses {judge.name!r}; pass another --out to judge with a different model"
        )

    def needs_judging(row: dict) -> bool:
        rec = cache.get(row["question_id"])
        if rec is None or rec.get("key") != _key(row["question"], row["answer"], row["pred"]):
            return True
        if rec["status"] == "ok":
            return False
        return rec.get("reason") == "request" or retry_failed

    pending = [r for r in preds if needs_judging(r)]

    def task(row: dict) -> dict:
        rec = judge_one(judge, row["question"], row["answer"], row["pred"], max_retries=max_retries)
        return {
            "question_id": row["question_id"],
            **rec,
            "key": _key(row["question"], row["answer"], row["pred"]),
            "judge_model": judge.name,
        }

    bar = tqdm(total=len(pending), desc="judge", unit="q", disable=not progress)
    failed = 0
    pool = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="judge")
    try:
        with JsonlAppender(cache_path) as f:
            futures = [pool.submit(task, r) for r in pending]
            for fut in cf.as_completed(futures):
                rec = fut.result()  # JudgeConfigError / bugs propagate and stop the run
                f.write(rec)
                cache[rec["question_id"]] = rec
                failed += rec["status"] != "ok"
                bar.update(1)
                bar.set_postfix(failed=failed)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)

    records = [cache[r["question_id"]] for r in preds]
    res = summarize(
        records,
        judge.name,
        backend=type(judge).__name__,
        endpoint=getattr(judge, "url", None),
        preds=source,
        asked=len(pending),
    )
    _write_atomic(out / "results.json", json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(out / "results.md", results_markdown(res))
    return res
