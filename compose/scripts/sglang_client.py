"""A client job: a few requests to an SGLang endpoint (a server or the router), each
answer checked, then exit 0. KIT_TARGET is the base URL, KIT_REQUESTS how many; with
KIT_API_KEY set, each request carries it (`Authorization: Bearer KEY`)."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

TARGET = os.environ.get("KIT_TARGET", "http://server:30000").rstrip("/")
REQUESTS = int(os.environ.get("KIT_REQUESTS", "4"))
WAIT = float(os.environ.get("KIT_CLIENT_WAIT", "300"))
API_KEY = os.environ.get("KIT_API_KEY", "")


def call(path: str, body: dict | None = None, timeout: float = 120) -> dict:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if API_KEY:
        headers["Authorization"] = f"Bearer {API_KEY}"
    request = urllib.request.Request(TARGET + path, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read() or b"{}")


def wait_ready() -> None:
    """Probe /health_generate until it answers 200 (the server can generate), up to WAIT s."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            urllib.request.urlopen(TARGET + "/health_generate", timeout=30).read()
            return
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"client: {TARGET} not ready after {WAIT:g} s: {exc}") from None
            time.sleep(2)


def main() -> int:
    wait_ready()
    for i in range(REQUESTS):
        prompt = f"What is {i} + {i + 1}?"
        start = time.monotonic()
        answer = call("/generate", {"text": prompt, "sampling_params": {"max_new_tokens": 8, "temperature": 0}})
        text = answer.get("text")
        if not isinstance(text, str):
            print(f"client: request {i}: no text in the answer: {answer}", file=sys.stderr)
            return 1
        tokens = answer.get("meta_info", {}).get("completion_tokens")
        print(f"client: request {i}: {tokens} token(s) in {time.monotonic() - start:.2f} s: {text!r}")
    print(f"client: {REQUESTS} request(s) answered by {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
