"""Serve a reward over HTTP, so that a run can score its images with a reward model in another process.

Standard library only (``http.server``): ``grpo-guard serve-reward NAME`` builds the registered reward
``NAME`` once and answers

* ``GET /health`` -> ``{"status": "ok", "reward": NAME}`` (no token needed);
* ``POST /score`` with ``{"prompts": [...], "images": {"format": "npy" | "png", "data": ...}}``
  -> ``{"scores": [...]}``, one float per image.

Every request is checked (token, size, then the body by :mod:`.score_request`: JSON shape, batch size,
image encoding, dtype, range) before anything is decoded in full or scored; a failure is a JSON
``{"error": "<one line>"}`` with a 4xx status, and a reward that raises is a 500. Requests are scored one at a time (a lock), so the reward
model only ever runs in one thread. Images travel as ``.npy`` (read with ``allow_pickle=False``, after
its header was checked) or PNG; nothing is ever unpickled. The server binds 127.0.0.1 unless told
otherwise, and any other address needs a bearer token, read from an environment variable by the CLI.
The protocol and the client (``grpo_guard.rewards.remote``) are described in docs/reward_server.md.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ..errors import UsageError
from . import build_reward
from .base import RewardContext
from .score_request import RequestError, one_line, parse_score_request

__all__ = ["serve_reward", "make_reward_server", "RewardHTTPServer", "add_serve_reward_parser",
           "DEFAULT_TOKEN_ENV", "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_BATCH", "is_loopback"]

DEFAULT_TOKEN_ENV = "GRPO_GUARD_REWARD_TOKEN"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_BATCH = 64
DEFAULT_CACHE_DIR = "~/.cache/grpo-guard"
#: seconds a connection may stay silent (slow or stalled clients cannot hold a thread forever)
SOCKET_TIMEOUT = 60.0
#: after an early error (401, 413, ...) at most this much of the unread body is drained, within this time
LINGER_BYTES = 256 * 1024 * 1024
LINGER_SECONDS = 2.0


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# -- the server ---------------------------------------------------------------------------------------


class RewardHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server holding one reward; requests are scored one at a time."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], reward, reward_name: str, *, token: str | None,
                 max_request_bytes: int, max_batch: int, log: Callable[[str], None] | None = None):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.reward = reward
        self.reward_name = reward_name
        self.token = token or None
        self.max_request_bytes = int(max_request_bytes)
        self.max_batch = int(max_batch)
        self.score_lock = threading.Lock()
        self._log = log
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return _url(str(host), int(port))

    def redact(self, text: str) -> str:
        if self.token:
            text = text.replace(self.token, "<redacted>")
        return text

    def log(self, line: str) -> None:
        line = self.redact(line)
        if self._log is not None:
            self._log(line)
        else:
            try:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def score(self, array, prompts: list[str], metadata: list[dict]) -> list[float]:
        images = torch.from_numpy(array)
        with self.score_lock:
            try:
                with torch.no_grad():
                    value = self.reward(images, prompts, metadata)
            except Exception as e:  # noqa: BLE001 - the reward's failure is reported, the server lives on
                raise RequestError(500, f"reward {self.reward_name} raised {type(e).__name__}: "
                                         f"{one_line(self.redact(str(e)), 200)}") from None
        n = len(prompts)
        if not torch.is_tensor(value) or tuple(value.shape) != (n,):
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise RequestError(500, f"reward {self.reward_name} returned {shape}, expected ({n},)")
        scores = [float(v) for v in value.detach().double().cpu().tolist()]
        if not all(math.isfinite(v) for v in scores):
            raise RequestError(500, f"reward {self.reward_name} returned NaN or Inf")
        return scores


class _Handler(BaseHTTPRequestHandler):
    server: RewardHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "grpo-guard-reward"
    sys_version = ""
    timeout = SOCKET_TIMEOUT

    # -- plumbing --
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        self.server.log(f"{self.address_string()} [{self.log_date_time_string()}] {format % args}")

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # errors and scored batches log their own line (health checks are not logged)

    def _path(self) -> str:
        return self.path.split("?", 1)[0].split("#", 1)[0]

    def _send_json(self, status: int, obj: dict, *, close: bool = False, extra: dict | None = None) -> None:
        body = json.dumps(obj, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own errors (bad request line, headers too long, ...) as one-line JSON too."""
        try:
            short = self.responses.get(code, ("error",))[0]
        except AttributeError:
            short = "error"
        msg = one_line(message or short, 200)
        self.log_error("code %d, message %s", code, msg)
        body = json.dumps({"error": msg}).encode()
        self.send_response(code, short)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _error(self, status: int, message: str, *, unread: int = 0, extra: dict | None = None) -> None:
        """Answer an error and close the connection. ``unread`` body bytes still on the wire are read and
        thrown away first (at most LINGER_BYTES within LINGER_SECONDS, never kept): closing a socket with
        unread data resets it, and the client, still sending, would never see the answer."""
        message = one_line(self.server.redact(message), 300)
        self.log_message('"%s" %d error: %s', self.requestline, status, message)
        self._send_json(status, {"error": message}, close=True, extra=extra)
        if unread > 0:
            self._discard(min(unread, LINGER_BYTES))

    def _discard(self, nbytes: int) -> None:
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            self.wfile.flush()
            while nbytes > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(nbytes, 1 << 20)) if hasattr(self.rfile, "read1") \
                    else self.rfile.read(min(nbytes, 1 << 16))
                if not chunk:
                    break
                nbytes -= len(chunk)
        except OSError:
            pass

    def _method_not_allowed(self, allowed: str) -> None:
        self._error(405, f"method {self.command} not allowed on {self._path()}; use {allowed}",
                    unread=self._declared_length(), extra={"Allow": allowed})

    def _declared_length(self) -> int:
        try:
            return max(0, int(self.headers.get("Content-Length", "0")))
        except ValueError:
            return 0

    def _route(self, method: str) -> None:
        path = self._path()
        routes = {"/health": "GET", "/score": "POST"}
        if path not in routes:
            self._error(404, f"unknown path {one_line(path, 80)}; use GET /health or POST /score",
                        unread=self._declared_length())
        elif routes[path] != method:
            self._method_not_allowed(routes[path])
        elif path == "/health":
            self._send_json(200, {"status": "ok", "reward": self.server.reward_name})
        else:
            self._score()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._route("PATCH")

    def do_HEAD(self) -> None:  # noqa: N802
        self._route("HEAD")

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._route("OPTIONS")

    # -- POST /score --
    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                                   token.encode("utf-8", "surrogateescape"))

    def _score(self) -> None:
        t0 = time.perf_counter()
        length_header = self.headers.get("Content-Length")
        declared = self._declared_length()
        if not self._authorised():
            self._error(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                        unread=declared, extra={"WWW-Authenticate": 'Bearer realm="grpo-guard-reward"'})
            return
        if self.headers.get("Transfer-Encoding") or length_header is None:
            self._error(411, "Content-Length required (chunked bodies are not accepted)")
            return
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            self._error(400, "bad Content-Length header")
            return
        if length > self.server.max_request_bytes:
            self._error(413, f"body of {length} bytes is larger than the server's limit of "
                             f"{self.server.max_request_bytes} bytes", unread=length)
            return
        try:
            body = self.rfile.read(length)
        except OSError as e:
            self.close_connection = True
            self.log_message('"%s" body not read (%s)', self.requestline, type(e).__name__)
            return
        if len(body) != length:
            self._error(400, f"body shorter than its Content-Length ({len(body)} of {length} bytes)")
            return
        try:
            array, prompts, metadata = parse_score_request(body, self.server.max_batch)
            del body
            scores = self.server.score(array, prompts, metadata)
        except RequestError as e:
            self._error(e.status, e.message)
            return
        self._send_json(200, {"scores": scores})
        self.log_message('"%s" scored %d images in %.3f s', self.requestline, len(scores), time.perf_counter() - t0)


def make_reward_server(reward, name: str, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                       max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_batch: int = DEFAULT_MAX_BATCH,
                       log: Callable[[str], None] | None = None) -> RewardHTTPServer:
    """Bind (but do not start) a server for an already-built ``reward``; ``server.serve_forever()`` runs it.

    Raises ValueError for a non-loopback ``host`` without a token, or bad limits."""
    _check_settings(host, port, token, max_request_bytes, max_batch)
    return RewardHTTPServer((host, int(port)), reward, name, token=token, max_request_bytes=max_request_bytes,
                            max_batch=max_batch, log=log)


def _check_settings(host: str, port: int, token: str | None, max_request_bytes: int, max_batch: int) -> None:
    if not isinstance(host, str) or not host:
        raise ValueError("host: expected an address such as 127.0.0.1")
    if not is_loopback(host) and not token:
        raise ValueError(f"host: binding {host} (not localhost) requires a token; set one in the environment "
                         f"variable {DEFAULT_TOKEN_ENV} (or the one named by --token-env)")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port: expected an integer in 0..65535, got {port!r}")
    if token is not None and (not isinstance(token, str) or not token.strip() or token != token.strip()):
        raise ValueError("token: must be a non-empty string without surrounding whitespace")
    if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) or max_request_bytes < 1:
        raise ValueError(f"max_request_bytes: expected a positive integer, got {max_request_bytes!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch: expected a positive integer, got {max_batch!r}")


def serve_reward(name: str, params: dict, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_batch: int = DEFAULT_MAX_BATCH,
                 ready_callback: Callable[[str, int], None] | None = None, *,
                 cache_dir: str | Path = DEFAULT_CACHE_DIR, device: str = "cpu") -> None:
    """Build the registered reward ``name`` with ``params`` and serve it until interrupted (blocks).

    ``ready_callback(host, port)`` is called once the socket is bound (``port`` is the real one when
    0 was asked for). Raises ValueError for bad settings (checked before the reward is built) or
    params the reward rejects."""
    token = token or None
    _check_settings(host, port, token, max_request_bytes, max_batch)
    if not isinstance(params, dict):
        raise ValueError(f"params: expected a dict, got {type(params).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {one_line(e, 120)}") from None
    ctx = RewardContext(cache_dir=Path(cache_dir).expanduser(), device=dev)
    reward = build_reward(name, dict(params), ctx)
    try:
        server = make_reward_server(reward, name, host, port, token=token, max_request_bytes=max_request_bytes,
                                    max_batch=max_batch)
    except OSError as e:  # the port is taken, the address is not this machine's, ...
        raise OSError(e.errno, f"cannot bind {host}:{port} ({e.strerror or e})") from None
    try:
        if ready_callback is not None:
            ready_callback(host, int(server.server_address[1]))
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


# -- the CLI verb -----------------------------------------------------------------------------------------


def _parse_params(items: list[str]) -> dict:
    params: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. resolution=32")
        try:
            params[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            params[key] = raw
    return params


def add_serve_reward_parser(subparsers) -> Any:
    """Add the ``serve-reward`` verb to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser(
        "serve-reward", help="serve a registered reward over HTTP (for rewards: [{name: remote, ...}])",
        description="Builds the reward NAME once and serves it: GET /health, POST /score (see "
                    "docs/reward_server.md). Binds 127.0.0.1 by default; any other address needs a token, "
                    f"read from an environment variable (default {DEFAULT_TOKEN_ENV}), never from the "
                    "command line.")
    p.add_argument("name", metavar="NAME", help="a registered reward name or a 'module:function' path")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed when ready)")
    p.add_argument("--token-env", default=None, metavar="VAR",
                   help=f"environment variable holding the bearer token (default {DEFAULT_TOKEN_ENV}, if set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a reward parameter, e.g. --set resolution=32 (repeatable; values parsed as YAML)")
    p.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_BYTES / 2 ** 20, metavar="N",
                   help="largest request body in MiB (default 64)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="N",
                   help="most images per request (default 64)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help=f"reward model cache (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--device", default="cpu", help="torch device of the reward model (default cpu)")
    p.set_defaults(func=_cmd_serve_reward)
    return p


def _cmd_serve_reward(args) -> int:

    env_name = args.token_env or DEFAULT_TOKEN_ENV
    if not env_name.strip():
        raise UsageError("--token-env: expected an environment variable name")
    token = os.environ.get(env_name) or None
    if args.token_env and token is None:
        raise UsageError(f"--token-env: the environment variable {env_name} is not set or empty")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port: expected 0..65535, got {args.port}")
    if not (args.max_request_mb > 0 and math.isfinite(args.max_request_mb)):
        raise UsageError(f"--max-request-mb: expected a positive number, got {args.max_request_mb}")
    if args.max_batch < 1:
        raise UsageError(f"--max-batch: expected a positive integer, got {args.max_batch}")
    params = _parse_params(args.set)

    def ready(host: str, port: int) -> None:
        print(f"serving reward {args.name} on {_url(host, port)}", flush=True)

    previous = {}
    if threading.current_thread() is threading.main_thread():  # SIGTERM and Ctrl-C stop it cleanly
        previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve_reward(args.name, params, host=args.host, port=args.port, token=token,
                     max_request_bytes=max(1, int(args.max_request_mb * 2 ** 20)), max_batch=args.max_batch,
                     ready_callback=ready, cache_dir=args.cache_dir, device=args.device)
    except ValueError as e:
        raise UsageError(one_line(str(e).replace(token, "<redacted>") if token else str(e), 400)) from None
    except OSError as e:  # the address is taken or cannot be bound
        raise UsageError(one_line(e.strerror if e.strerror and "cannot bind" in e.strerror else str(e), 400)) \
            from None
    except KeyboardInterrupt:
        print("reward server stopped", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
