"""A reward scored by a reward server (``grpo-guard serve-reward``) over HTTP.

In a run config::

    rewards:
      - name: remote
        params: {url: "http://127.0.0.1:8765", timeout: 30, retries: 3, backoff: 0.5}

Each call POSTs the images (``.npy`` or PNG, base64) and prompts to ``URL/score`` and returns the
server's scores as a float32 (B,) tensor. Every request has a timeout; connection errors, timeouts, 5xx,
408, 429 and malformed answers (not JSON, wrong number of scores, NaN) are retried with exponential
backoff; other 4xx fail at once. When the retries are spent it raises :class:`RemoteRewardError`,
a one-line RuntimeError naming the URL, the attempts and the last problem, which the training loop
turns into a skipped batch. The bearer token is read from an environment variable and never appears in
an error message. Protocol and server: docs/reward_server.md.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..core._checks import all_finite
from .base import RewardContext

__all__ = ["make_remote_reward", "RemoteReward", "RemoteRewardError"]

DEFAULT_TOKEN_ENV = "GRPO_GUARD_REWARD_TOKEN"
#: an answer larger than this is not a list of scores
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_RETRY_4XX = {408, 429}


class RemoteRewardError(RuntimeError):
    """The reward server could not score a batch (after the retries, or at once for a client error)."""


class _Attempt(Exception):
    """One failed attempt: ``retry`` says whether another attempt may succeed."""

    def __init__(self, problem: str, retry: bool):
        super().__init__(problem)
        self.problem = problem
        self.retry = retry


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed (a redirect would carry the token to another address)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RemoteReward:
    """Callable ``(images, prompts, metadata) -> (B,) float32`` scored by a reward server."""

    name = "remote"

    def __init__(self, url: str, *, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 token: str | None = None, fmt: str = "npy", max_batch: int = 64,
                 sleep: Callable[[float], None] = time.sleep):
        self.url = url
        self.score_url = _score_url(url)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.format = fmt
        self.max_batch = int(max_batch)
        self._token = token or None
        self._sleep = sleep
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        #: attempts made by the last call (all its chunks together), for logs and tests
        self.last_attempts = 0

    def __repr__(self) -> str:  # never shows the token
        return (f"RemoteReward(url={self.url!r}, timeout={self.timeout}, retries={self.retries}, "
                f"backoff={self.backoff}, format={self.format!r}, max_batch={self.max_batch}, "
                f"token={'set' if self._token else 'none'})")

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        if not torch.is_tensor(images) or images.ndim != 4:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images: expected a (B, C, H, W) tensor, got {shape}")
        prompts = list(prompts)
        n = images.shape[0]
        if len(prompts) != n:
            raise ValueError(f"prompts: {len(prompts)} prompts for {n} images")
        if metadata is not None and len(metadata) != n:
            raise ValueError(f"metadata: {len(metadata)} entries for {n} images")
        x = images.detach().to("cpu", torch.float32)
        if not all_finite(x):
            raise ValueError("images: contain NaN or Inf")
        x = x.clamp(0.0, 1.0)  # the reward interface's range; float error in a decoder may overshoot it
        meta = _metadata_json(metadata)
        self.last_attempts = 0
        out = []
        for start in range(0, n, self.max_batch):
            stop = min(n, start + self.max_batch)
            body = {"prompts": prompts[start:stop], "images": self._encode(x[start:stop])}
            if meta is not None:
                body["metadata"] = meta[start:stop]
            out.append(self._post(json.dumps(body).encode(), stop - start))
        return torch.cat(out)

    # -- encoding --
    def _encode(self, x: Tensor) -> dict:
        arr = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        if self.format == "npy":
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            return {"format": "npy", "data": base64.b64encode(buf.getvalue()).decode("ascii")}

        c = arr.shape[1]
        if c not in (1, 3):
            raise ValueError(f"images: format png needs 1 (grey) or 3 (RGB) channels, got {c}")
        data = []
        for img in arr:
            u8 = np.round(img * 255.0).astype(np.uint8)
            im = Image.fromarray(u8[0] if c == 1 else np.ascontiguousarray(u8.transpose(1, 2, 0)))  # L or RGB
            buf = io.BytesIO()
            im.save(buf, format="PNG", compress_level=1)
            data.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        return {"format": "png", "data": data}

    # -- one chunk, with retries --
    def _post(self, body: bytes, n: int) -> Tensor:
        attempts, problem = 0, "no attempt made"
        for i in range(self.retries + 1):
            if i:
                self._sleep(self.backoff * 2 ** (i - 1))
            attempts += 1
            self.last_attempts += 1
            try:
                return self._attempt(body, n)
            except _Attempt as e:
                problem = self._redact(e.problem)
                if not e.retry:
                    break
        raise RemoteRewardError(_one_line(f"remote reward {self.url}: failed after {attempts} "
                                          f"attempt{'s' if attempts != 1 else ''}: {problem}", 400))

    def _redact(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "<redacted>")
        return _one_line(text)

    def _attempt(self, body: bytes, n: int) -> Tensor:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(self.score_url, data=body, headers=headers, method="POST")
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = _read_bounded(resp, deadline)
                status = resp.status
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            e.close()
            code = e.code
            if 300 <= code < 400:
                raise _Attempt(f"HTTP {code} redirect (not followed){detail}", retry=False) from None
            retry = code >= 500 or code in _RETRY_4XX
            raise _Attempt(f"HTTP {code}{detail}", retry=retry) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise _Attempt(f"timed out after {self.timeout:g} s", retry=True) from None
            if isinstance(reason, (ConnectionRefusedError, socket.gaierror)) or not isinstance(reason, OSError):
                raise _Attempt(f"cannot connect ({_describe(reason)})", retry=True) from None
            raise _Attempt(f"connection failed ({_describe(reason)})", retry=True) from None
        except (socket.timeout, TimeoutError):
            raise _Attempt(f"timed out after {self.timeout:g} s", retry=True) from None
        except (HTTPException, OSError) as e:  # reset, closed mid-answer, bad status line, ...
            raise _Attempt(f"connection failed ({_describe(e)})", retry=True) from None
        if status != 200:
            raise _Attempt(f"unexpected HTTP {status}", retry=True)
        return _parse_scores(raw, n)


def _describe(e) -> str:
    if isinstance(e, BaseException):
        text = str(e)
        return f"{type(e).__name__}: {text}" if text else type(e).__name__
    return str(e)


def _read_bounded(resp, deadline: float) -> bytes:
    """Read the answer in chunks, each within the socket timeout, the whole within the deadline."""
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("answer not complete within the timeout")
        chunk = resp.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _Attempt(f"answer larger than {MAX_RESPONSE_BYTES} bytes", retry=True)
        chunks.append(chunk)


def _error_detail(e: urllib.error.HTTPError) -> str:
    """`` (the server's error text)`` from a JSON error body, if there is one."""
    try:
        raw = e.read(16 * 1024)
        obj = json.loads(raw.decode("utf-8"))
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return f" ({_one_line(obj['error'], 200)})"
    except Exception:  # noqa: BLE001 - no detail is fine
        pass
    return f" ({e.reason})" if getattr(e, "reason", None) else ""


def _parse_scores(raw: bytes, n: int) -> Tensor:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        start = _one_line(raw[:40].decode("utf-8", "replace"), 40)
        raise _Attempt(f"malformed answer: not JSON ({len(raw)} bytes starting {start!r})", retry=True) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("scores"), list):
        raise _Attempt(f"malformed answer: expected an object with a 'scores' list, got "
                       f"{_one_line(json.dumps(obj)[:60], 60)}", retry=True)
    scores = obj["scores"]
    if len(scores) != n:
        raise _Attempt(f"malformed answer: {len(scores)} scores for {n} images", retry=True)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores):
        raise _Attempt("malformed answer: scores must be numbers", retry=True)
    out = torch.tensor([float(v) for v in scores], dtype=torch.float32)
    if not all(math.isfinite(float(v)) for v in scores) or not all_finite(out):
        raise _Attempt("malformed answer: scores contain NaN or Inf", retry=True)
    return out


def _metadata_json(metadata: list[dict] | None) -> list[dict] | None:
    if metadata is None or not any(metadata):
        return None
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata: not sendable as JSON ({_one_line(e, 120)})") from None
    return list(metadata)


def _score_url(url) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError("url: expected the reward server's address, e.g. http://127.0.0.1:8765")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url: expected http://HOST:PORT or https://HOST:PORT, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url: must not hold credentials; put the token in the environment variable named "
                         "by token_env")
    try:
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError as e:
        raise ValueError(f"url: {e}") from None
    path = parts.path.rstrip("/")
    if not path.endswith("/score"):
        path += "/score"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _number(params: dict, key: str, default, kind, minimum, exclusive: bool = False):
    v = params.pop(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise ValueError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {v!r}")
    v = kind(v)
    if not math.isfinite(v) or (v <= minimum if exclusive else v < minimum):
        raise ValueError(f"{key}: must be {'>' if exclusive else '>='} {minimum}, got {v!r}")
    return v


def make_remote_reward(params: dict, ctx: RewardContext | None = None) -> RemoteReward:
    """The ``remote`` reward: ``url`` (required), ``timeout`` (s, 30), ``retries`` (3), ``backoff``
    (s, 0.5, doubled each retry), ``token_env`` (default GRPO_GUARD_REWARD_TOKEN, optional),
    ``format`` (npy or png) and ``max_batch`` (64; larger batches are split)."""
    params = dict(params)
    if "url" not in params:
        raise ValueError("url: the remote reward needs params.url, e.g. http://127.0.0.1:8765")
    url = params.pop("url")
    _score_url(url)
    timeout = _number(params, "timeout", 30.0, float, 0.0, exclusive=True)
    retries = _number(params, "retries", 3, int, 0)
    backoff = _number(params, "backoff", 0.5, float, 0.0)
    max_batch = _number(params, "max_batch", 64, int, 1)
    fmt = params.pop("format", "npy")
    if fmt not in ("npy", "png"):
        raise ValueError(f"format: expected 'npy' or 'png', got {fmt!r}")
    explicit_env = "token_env" in params
    token_env = params.pop("token_env", DEFAULT_TOKEN_ENV)
    if not isinstance(token_env, str) or not token_env:
        raise ValueError(f"token_env: expected an environment variable name, got {token_env!r}")
    if params:
        raise ValueError(f"params: unknown {sorted(params)} for the remote reward; expected url, timeout, "
                         f"retries, backoff, token_env, format, max_batch")
    token = os.environ.get(token_env) or None
    if explicit_env and token is None:
        raise ValueError(f"token_env: the environment variable {token_env} is not set or empty")
    return RemoteReward(url, timeout=timeout, retries=retries, backoff=backoff, token=token, fmt=fmt,
                        max_batch=max_batch)
