"""``slotvlm judge``: score predictions with an LLM judge (Video-ChatGPT protocol)."""
from __future__ import annotations

import argparse
import os
import sys

from ._model_args import dtype_name
from ._types import nonneg_float, nonneg_int, positive_float, positive_int

HELP = "judge predictions (preds.jsonl) with an LLM: accuracy and 0-5 score, resumable"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Ask an LLM whether each prediction matches the correct answer (yes/no and a 0-5 score), "
        "as in Video-ChatGPT's evaluation. Verdicts are appended to OUT/verdicts.jsonl as they "
        "arrive, so an interrupted run resumes; OUT/results.json and OUT/results.md hold "
        "accuracy = yes/(yes+no), the mean score, the counts (failed replies are counted, never "
        "dropped), the pinned judge model and the date. Backends: an OpenAI-compatible "
        "chat-completions endpoint (key from $OPENAI_API_KEY, temperature 0) or, with --local, a "
        "transformers causal LM."
    )
    p.add_argument("--preds", required=True, help="predictions (JSON lines from `slotvlm predict`)")
    p.add_argument("--out", required=True, help="output folder (verdict cache + results)")
    p.add_argument(
        "--base-url",
        default=None,
        help="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1 "
        "(default: $OPENAI_BASE_URL, else https://api.openai.com/v1)",
    )
    p.add_argument(
        "--judge-model",
        default=None,
        help="pinned judge model name sent to the endpoint (default gpt-3.5-turbo-0125); "
        "recorded in the results",
    )
    p.add_argument("--local", metavar="ID|PATH", help="judge with a local transformers causal LM")
    p.add_argument("--device", default=None, help="device of the --local judge (default: cuda if any)")
    p.add_argument("--dtype", default=None, type=dtype_name, metavar="DTYPE",  # bf16, fp32, ... accepted
                   help="dtype of the --local judge (default: the checkpoint's)")
    p.add_argument("--concurrency", type=positive_int, default=4, help="requests in flight (default 4)")
    p.add_argument(
        "--max-retries",
        type=nonneg_int,
        default=3,
        help="re-asks after a malformed or ambiguous reply, and retries after a timeout / 429 / 5xx / "
        "dropped connection (bounded exponential backoff); then the question counts as failed "
        "(default 3). A refused connection, a redirect or HTTP 401/403/404 stop the run at once",
    )
    p.add_argument("--timeout", type=positive_float, default=60.0, help="total seconds per HTTP request, connecting and reading the whole reply "
                   "included (default 60)")
    p.add_argument("--backoff", type=nonneg_float, default=1.0,
                   help="first retry delay in seconds, doubled per retry, capped at 30 (default 1)")
    p.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=True,
                   help="re-ask the questions an earlier run of this --out did not judge: replies that could not "
                   "be parsed and requests that never got a reply (default; --no-retry-failed re-asks only "
                   "the unreachable ones)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from slotvlm.eval.judge import (
        DEFAULT_BASE_URL, DEFAULT_JUDGE_MODEL, JudgeConfigError, LocalJudge, OpenAIChatJudge,
        run_judge,
    )

    if args.local:
        if args.base_url or args.judge_model:
            raise SystemExit("slotvlm judge: --local cannot be combined with --base-url/--judge-model")
        import torch

        dtype = getattr(torch, args.dtype) if args.dtype else None
        judge = LocalJudge(args.local, device=args.device, dtype=dtype)
        concurrency = 1  # one model, one generate at a time
    else:
        base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if base_url == DEFAULT_BASE_URL and not os.environ.get("OPENAI_API_KEY"):
            raise SystemExit("slotvlm judge: set OPENAI_API_KEY (or pass --base-url / --local)")
        judge = OpenAIChatJudge(
            base_url,
            args.judge_model or DEFAULT_JUDGE_MODEL,
            timeout=args.timeout,
            max_retries=args.max_retries,
            backoff=args.backoff,
        )
        concurrency = args.concurrency
    try:
        res = run_judge(
            args.preds,
            args.out,
            judge,
            concurrency=concurrency,
            max_retries=args.max_retries,
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
        )
    except JudgeConfigError as e:  # also JudgeUnreachableError: the run stopped, verdicts so far are saved
        print(f"slotvlm judge: error: {e}; verdicts received so far are saved in {args.out}, rerun to continue",
              file=sys.stderr)
        return 2
    from ..cli import EXIT_FAILURES  # noqa: PLC0415

    acc = "n/a" if res["accuracy"] is None else f"{100 * res['accuracy']:.1f}%"
    score = "n/a" if res["score"] is None else f"{res['score']:.2f}"
    print(
        f"accuracy {acc}  score {score}  judged {res['yes'] + res['no']} of {res['total']}: yes {res['yes']}  "
        f"no {res['no']}  failed {res['failed']} (unparsable reply {res['failed_malformed']}, no reply "
        f"{res['failed_request']})  asked this run {res['asked']}  (judge {res['judge_model']}) -> "
        f"{args.out}/results.json"
    )
    if res["failed"]:
        print(
            f"{res['failed']} question(s) not judged ({res['failed_malformed']} unparsable, "
            f"{res['failed_request']} unreachable; ids in results.json 'failed_ids'); rerun the same command "
            f"to ask only those",
            file=sys.stderr,
        )
        return EXIT_FAILURES
    return 0
