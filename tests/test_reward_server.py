"""The reward server (grpo_guard.rewards.server) and its client, the ``remote`` reward (grpo_guard.rewards.remote).

A real server process serves the built-in ``ink`` reward; the client's faults are played by small fake
servers in threads; a tiny training run scores its images through a real server, and stops cleanly
when the server is unreachable or dies mid-run."""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from grpo_guard.rewards import RewardContext, build_reward
from grpo_guard.rewards.remote import RemoteReward, RemoteRewardError, make_remote_reward
from grpo_guard.train.checkpoint import list_checkpoints
from grpo_guard.train.loop import TrainingStopped, train
from tiny_backbone import rows, tiny_cfg

torch.set_num_threads(1)

TOKEN_ENV = "GRPO_GUARD_REWARD_TOKEN"
SECRET = "test-token-7f3a9c0e5b1d"
MAX_BATCH = 8  # the plain server's --max-batch
MAX_MB = 1  # the plain server's --max-request-mb
PROMPTS = [f"a handwritten {d}" for d in range(10)]

# the serve-reward verb, wired into a parser of its own (as cli.py will wire it)
SERVE = ("import argparse, sys\n"
         "from grpo_guard.rewards.server import add_serve_reward_parser\n"
         "parser = argparse.ArgumentParser()\n"
         "add_serve_reward_parser(parser.add_subparsers(dest='command'))\n"
         "args = parser.parse_args(sys.argv[1:])\n"
         "sys.exit(args.func(args))\n")


# ---- a real server process ------------------------------------------------------------------------------

class ServerProcess:
    def __init__(self, tmp: Path, *args: str, token: str | None = None):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env.pop(TOKEN_ENV, None)
        if token:
            env[TOKEN_ENV] = token
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / "server.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve-reward", "ink", "--port", "0", "--set", "resolution=8",
             "--cache-dir", str(tmp / "cache"), *args],
            stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self.port = None

    def _pump(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float = 60.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("serving reward ink on "):
                self.url = line.split(" on ", 1)[1].strip()
                self.port = int(self.url.rsplit(":", 1)[1])
                return self
        self.stop()
        raise RuntimeError(f"the reward server did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two real servers of the ink reward, started together: ``plain`` (no token, small limits) and
    ``token`` (a bearer token from the environment). Always stopped at the end."""
    tmp = tmp_path_factory.mktemp("servers")
    started = []
    try:
        started.append(ServerProcess(tmp / "plain", "--max-batch", str(MAX_BATCH), "--max-request-mb", str(MAX_MB)))
        started.append(ServerProcess(tmp / "token", token=SECRET))
        for s in started:
            s.wait_ready()
        yield {"plain": started[0], "token": started[1]}
    finally:
        for s in started:
            s.stop()


@pytest.fixture
def server(servers):
    assert servers["plain"].proc.poll() is None, "the server died"
    return servers["plain"]


@pytest.fixture
def token_server(servers):
    assert servers["token"].proc.poll() is None, "the server died"
    return servers["token"]


@pytest.fixture(scope="module")
def ink():
    return build_reward("ink", {"resolution": 8}, RewardContext(Path("/nonexistent-cache"), torch.device("cpu")))


@pytest.fixture(autouse=True)
def no_token_env(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def images(n: int, seed: int = 0, c: int = 1) -> torch.Tensor:
    return torch.rand(n, c, 8, 8, generator=torch.Generator().manual_seed(seed))


def npy_b64(a) -> str:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=True)  # True only so that the object-dtype case can be written
    return base64.b64encode(buf.getvalue()).decode()


def png_b64(a: np.ndarray) -> str:
    """(H, W) uint8 -> a grey PNG, (H, W, 3) uint8 -> an RGB PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def request(port: int, method: str, path: str, body=None, headers: dict | None = None):
    """(status, headers, decoded JSON) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        payload = r.read()
    finally:
        conn.close()
    return r.status, r.headers, json.loads(payload) if payload else None


def score_body(x: torch.Tensor, prompts=None) -> dict:
    return {"prompts": prompts if prompts is not None else PROMPTS[: len(x)],
            "images": {"format": "npy", "data": npy_b64(x.numpy())}}


# ---- the server ---------------------------------------------------------------------------------------------

def test_health_needs_no_token(server, token_server):
    for s in (server, token_server):
        status, _, obj = request(s.port, "GET", "/health")
        assert (status, obj) == (200, {"status": "ok", "reward": "ink"})


def test_npy_scores_equal_the_in_process_reward(server, ink):
    x = images(6)
    status, _, obj = request(server.port, "POST", "/score", score_body(x))
    assert status == 200 and set(obj) == {"scores"}
    expected = ink(x, PROMPTS[:6], [{}] * 6)
    assert torch.allclose(torch.tensor(obj["scores"]), expected, atol=1e-6)
    remote = make_remote_reward({"url": server.url}, None)
    got = remote(x, PROMPTS[:6], [{}] * 6)
    assert got.dtype == torch.float32 and got.shape == (6,)
    assert torch.allclose(got, expected, atol=1e-6)


def test_png_scores_equal_the_in_process_reward_on_8_bit_images(server, ink):
    x = images(5, seed=1)
    x8 = torch.round(x * 255) / 255  # what a PNG can carry
    expected = ink(x8, PROMPTS[:5], [{}] * 5)
    got = make_remote_reward({"url": server.url, "format": "png"}, None)(x, PROMPTS[:5], [{}] * 5)
    assert torch.allclose(got, expected, atol=1e-6)
    grey = [png_b64((x8[i, 0].numpy() * 255).round().astype(np.uint8)) for i in range(5)]
    status, _, obj = request(server.port, "POST", "/score",
                             {"prompts": PROMPTS[:5], "images": {"format": "png", "data": grey}})
    assert status == 200 and torch.allclose(torch.tensor(obj["scores"]), expected, atol=1e-6)


def test_batches_larger_than_max_batch_are_split_by_the_client(server, ink):
    x = images(MAX_BATCH * 2 + 3, seed=2)
    prompts = [PROMPTS[i % 10] for i in range(len(x))]
    remote = make_remote_reward({"url": server.url, "max_batch": MAX_BATCH}, None)
    got = remote(x, prompts, None)
    assert remote.last_attempts == 3  # three requests, none retried
    assert torch.allclose(got, ink(x, prompts, None), atol=1e-6)


def _cases():
    x = images(4).numpy()
    nan = x.copy()
    nan[1, 0, 2, 3] = np.nan
    big = x.copy()
    big[0, 0, 0, 0] = 1.5
    npy = lambda a, n=4: {"prompts": PROMPTS[:n], "images": {"format": "npy", "data": npy_b64(a)}}  # noqa: E731
    cut = base64.b64decode(npy_b64(x))[:-7]
    grey = png_b64(np.zeros((8, 8), np.uint8))
    return [
        ("malformed JSON", b'{"prompts": ["a handwritten 1"', "malformed JSON"),
        ("not UTF-8", b"\xff\xfe{}", "malformed JSON"),
        ("JSON not an object", b"[1, 2, 3]", "expected a JSON object"),
        ("unknown field", {**npy(x), "extra": 1}, "unknown fields ['extra']"),
        ("prompts not a list", {"prompts": "a handwritten 1", "images": npy(x)["images"]}, "prompts: expected a list"),
        ("prompt not a string", {"prompts": [1, 2, 3, 4], "images": npy(x)["images"]}, "prompts: expected a list"),
        ("images missing", {"prompts": PROMPTS[:4]}, "images: expected an object"),
        ("empty batch", npy(x[:0], 0), "empty batch"),
        ("fewer prompts than images", npy(x, 3), "4 images for 3 prompts"),
        ("more prompts than images", npy(x[:2], 4), "2 images for 4 prompts"),
        ("png: fewer images than prompts", {"prompts": PROMPTS[:3], "images": {"format": "png", "data": [grey]}},
         "1 images for 3 prompts"),
        ("batch above max_batch", npy(np.zeros((MAX_BATCH + 1, 1, 8, 8), np.float32), MAX_BATCH + 1) | {
            "prompts": [PROMPTS[0]] * (MAX_BATCH + 1)}, f"max_batch {MAX_BATCH}"),
        ("unknown format", {"prompts": PROMPTS[:4], "images": {"format": "jpeg", "data": ""}},
         "expected 'npy' or 'png'"),
        ("npy data not a string", {"prompts": PROMPTS[:4], "images": {"format": "npy", "data": [1]}}, "base64 string"),
        ("bad base64", {"prompts": PROMPTS[:4], "images": {"format": "npy", "data": "not*base64!"}},
         "not valid base64"),
        ("not an npy file", {"prompts": PROMPTS[:4], "images": {"format": "npy",
                                                                 "data": base64.b64encode(b"PK\x03\x04zip").decode()}},
         "bad magic"),
        ("pickle-bearing npy (object dtype)", npy(np.array([{"a": 1}, None, "x", 3], dtype=object)), "dtype object"),
        ("float64", npy(x.astype(np.float64)), "dtype float64"),
        ("uint8", npy((x * 255).astype(np.uint8)), "dtype uint8"),
        ("3 dims", npy(x[:, 0]), "expected 4 dims"),
        ("truncated npy", {"prompts": PROMPTS[:4], "images": {"format": "npy", "data": base64.b64encode(cut).decode()}},
         "data bytes"),
        ("NaN values", npy(nan), "NaN or Inf"),
        ("values above 1", npy(big), "expected [0, 1]"),
        ("values below 0", npy(x - 0.5), "expected [0, 1]"),
        ("PNG that does not decode", {"prompts": PROMPTS[:1], "images": {
            "format": "png", "data": [base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()]}},
         "not a decodable PNG"),
        ("png of different sizes", {"prompts": PROMPTS[:2], "images": {"format": "png", "data": [
            grey, png_b64(np.zeros((4, 4), np.uint8))]}}, "differs from image 0"),
    ]


@pytest.mark.parametrize("body, fragment", [c[1:] for c in _cases()], ids=[c[0] for c in _cases()])
def test_bad_requests_are_400_with_one_line(server, body, fragment):
    status, headers, obj = request(server.port, "POST", "/score", body)
    assert status == 400, obj
    assert headers["Content-Type"] == "application/json"
    assert set(obj) == {"error"} and fragment in obj["error"] and "\n" not in obj["error"]
    assert "Traceback" not in obj["error"]


def test_size_is_checked_before_the_body_is_read(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/score")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_MB * 2 ** 20 + 1))
    conn.endheaders()  # no body is sent: the answer must come anyway
    r = conn.getresponse()
    obj = json.loads(r.read())
    conn.close()
    assert r.status == 413 and "larger than the server's limit" in obj["error"]

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/score")
    conn.endheaders()  # no Content-Length
    r = conn.getresponse()
    obj = json.loads(r.read())
    conn.close()
    assert r.status == 411 and "Content-Length required" in obj["error"]


def test_an_oversized_batch_from_the_client_is_a_413_not_retried(server):
    remote = make_remote_reward({"url": server.url, "max_batch": MAX_BATCH, "backoff": 5.0}, None)
    x = torch.rand(MAX_BATCH, 3, 128, 128)  # 1.5 MiB of float32, 2 MiB as base64: over the 1 MiB limit
    with pytest.raises(RemoteRewardError, match="after 1 attempt: HTTP 413 .*larger than the server's limit"):
        remote(x, [PROMPTS[0]] * MAX_BATCH)
    assert request(server.port, "GET", "/health")[0] == 200


def test_unknown_paths_and_wrong_methods(server):
    assert request(server.port, "GET", "/nope")[0] == 404
    assert request(server.port, "POST", "/score/x", {})[0] == 404
    status, headers, obj = request(server.port, "GET", "/score")
    assert status == 405 and headers["Allow"] == "POST" and "not allowed" in obj["error"]
    assert request(server.port, "POST", "/health", {})[0] == 405
    assert request(server.port, "DELETE", "/score")[0] == 405


def test_a_reward_that_raises_is_a_500_and_the_server_lives_on(server):
    rgb = [png_b64(np.zeros((8, 8, 3), np.uint8))]  # ink takes grey images only
    body = {"prompts": PROMPTS[:1], "images": {"format": "png", "data": rgb}}
    status, _, obj = request(server.port, "POST", "/score", body)
    assert status == 500
    assert obj["error"].startswith("reward ink raised ValueError") and "(1, 3, 8, 8)" in obj["error"]
    assert "\n" not in obj["error"] and "Traceback" not in obj["error"]
    assert request(server.port, "POST", "/score", score_body(images(2)))[0] == 200


def test_token_is_required_and_never_logged(token_server, ink, monkeypatch):
    body = score_body(images(3))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {SECRET}"},
                    {"Authorization": f"Bearer {SECRET}x"}):
        status, h, obj = request(token_server.port, "POST", "/score", body, headers)
        assert status == 401 and "bearer token" in obj["error"] and h["WWW-Authenticate"].startswith("Bearer")
    status, _, obj = request(token_server.port, "POST", "/score", body, {"Authorization": f"Bearer {SECRET}"})
    assert status == 200 and len(obj["scores"]) == 3
    assert request(token_server.port, "POST", f"/score?token={SECRET}", body)[0] == 401  # logged, redacted

    monkeypatch.setenv(TOKEN_ENV, SECRET)
    got = make_remote_reward({"url": token_server.url}, None)(images(3), PROMPTS[:3], None)
    assert torch.allclose(got, ink(images(3), PROMPTS[:3], None), atol=1e-6)

    monkeypatch.setenv("OTHER_TOKEN", "not-the-token-123")  # a 401 is not retried, and names no token
    remote = make_remote_reward({"url": token_server.url, "token_env": "OTHER_TOKEN", "backoff": 5}, None)
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError, match="after 1 attempt: HTTP 401") as e:
        remote(images(3), PROMPTS[:3], None)
    assert time.monotonic() - t0 < 2 and remote.last_attempts == 1
    assert "not-the-token-123" not in str(e.value) and "not-the-token-123" not in repr(remote)

    time.sleep(0.2)
    log = token_server.log()
    assert "401" in log and "<redacted>" in log
    assert SECRET not in log


def test_binding_a_public_address_needs_a_token(tmp_path, monkeypatch):
    import argparse

    from grpo_guard.cli import UsageError
    from grpo_guard.rewards.server import add_serve_reward_parser, make_reward_server, serve_reward

    with pytest.raises(ValueError, match="requires a token"):
        serve_reward("ink", {"resolution": 8}, host="0.0.0.0", port=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="requires a token"):
        make_reward_server(lambda *a: None, "x", host="0.0.0.0")
    parser = argparse.ArgumentParser()
    add_serve_reward_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve-reward", "ink", "--host", "0.0.0.0", "--set", "resolution=8"])
    with pytest.raises(UsageError, match="requires a token"):
        args.func(args)
    args = parser.parse_args(["serve-reward", "ink", "--token-env", "NO_SUCH_VAR_X"])
    with pytest.raises(UsageError, match="NO_SUCH_VAR_X is not set"):
        args.func(args)
    args = parser.parse_args(["serve-reward", "ink", "--set", "resolution"])
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        args.func(args)
    args = parser.parse_args(["serve-reward", "ink", "--max-batch", "0"])
    with pytest.raises(UsageError, match="--max-batch"):
        args.func(args)


# ---- the client against fake servers ---------------------------------------------------------------------------

class FakeServer:
    """A thread serving POST /score with a chosen misbehaviour; records when each attempt arrived."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.times: list[float] = []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.times.append(time.monotonic())
                fake.respond(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def attempts(self) -> int:
        return len(self.times)

    @staticmethod
    def send(h, status: int, payload: bytes, ctype: str = "application/json"):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def good(self, h, body):
        x = np.load(io.BytesIO(base64.b64decode(body["images"]["data"])), allow_pickle=False)
        self.send(h, 200, json.dumps({"scores": x.mean(axis=(1, 2, 3)).tolist()}).encode())

    def respond(self, h, body):
        n = len(body["prompts"])
        b = self.behaviour
        if b == "hang":
            self.release.wait(10)
            return
        if b == "slow":
            time.sleep(0.4)
            return self.good(h, body)
        if b == "good":
            return self.good(h, body)
        if b == "dies_after_one":
            if self.attempts == 1:
                self.good(h, body)
                threading.Thread(target=self.stop, daemon=True).start()  # the server goes down
            return
        if b == "html":
            return self.send(h, 200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        if b == "truncated":
            return self.send(h, 200, b'{"scores": [0.1, 0.2')
        if b == "not_an_object":
            return self.send(h, 200, json.dumps([0.5] * n).encode())
        if b == "wrong_count":
            return self.send(h, 200, json.dumps({"scores": [0.5] * (n + 1)}).encode())
        if b == "nan":
            return self.send(h, 200, ('{"scores": [NaN' + ", 0.5" * (n - 1) + "]}").encode())
        if b == "strings":
            return self.send(h, 200, json.dumps({"scores": ["0.5"] * n}).encode())
        if b == "disconnect":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if b in ("500", "503", "429"):
            return self.send(h, int(b), b'{"error": "busy"}')
        if b == "401":
            return self.send(h, 401, b'{"error": "missing or wrong bearer token"}')
        if b == "400_echoes_token":
            return self.send(h, 400, json.dumps({"error": "bad: " + h.headers.get("Authorization", "")}).encode())
        raise AssertionError(b)

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    made = []

    def make(behaviour: str) -> FakeServer:
        made.append(FakeServer(behaviour))
        return made[-1]

    yield make
    for f in made:
        f.release.set()
        try:
            f.stop()
        except OSError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(url: str, sleeps: list | None = None, **kw) -> RemoteReward:
    def sleep(s):
        if sleeps is not None:
            sleeps.append(s)
        time.sleep(s)

    opts = dict(timeout=2.0, retries=2, backoff=0.05) | kw
    return RemoteReward(url, sleep=sleep, **opts)


def test_server_down_is_retried_with_backoff_then_fails(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    sleeps: list = []
    remote = client(url, sleeps)
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError) as e:
        remote(images(3), PROMPTS[:3])
    elapsed = time.monotonic() - t0
    msg = str(e.value)
    assert url in msg and "after 3 attempts" in msg and "cannot connect" in msg and "\n" not in msg
    assert remote.last_attempts == 3 and sleeps == [0.05, 0.1]  # exponential backoff
    assert 0.15 <= elapsed < 3


def test_a_hanging_server_times_out_every_attempt(fake):
    f = fake("hang")
    remote = client(f.url, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError, match="after 3 attempts: timed out after 0.3 s"):
        remote(images(3), PROMPTS[:3])
    elapsed = time.monotonic() - t0
    assert f.attempts == 3
    assert 3 * 0.3 + 0.15 <= elapsed < 4  # never hangs


def test_a_slow_server_within_the_timeout_succeeds(fake):
    f = fake("slow")
    x = images(3)
    got = client(f.url, timeout=3.0)(x, PROMPTS[:3])
    assert f.attempts == 1 and torch.allclose(got, x.mean((1, 2, 3)))


@pytest.mark.parametrize("behaviour, fragment", [
    ("html", "not JSON"),
    ("truncated", "not JSON"),
    ("not_an_object", "'scores' list"),
    ("wrong_count", "4 scores for 3 images"),
    ("nan", "NaN or Inf"),
    ("strings", "must be numbers"),
    ("disconnect", "connection failed"),
    ("500", "HTTP 500 (busy)"),
    ("503", "HTTP 503"),
    ("429", "HTTP 429"),
])
def test_bad_answers_are_retried_then_fail_clearly(fake, behaviour, fragment):
    f = fake(behaviour)
    remote = client(f.url, backoff=0.1)
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError) as e:
        remote(images(3), PROMPTS[:3])
    elapsed = time.monotonic() - t0
    msg = str(e.value)
    assert msg.startswith(f"remote reward {f.url}: failed after 3 attempts") and fragment in msg, msg
    assert "\n" not in msg
    assert f.attempts == 3
    gaps = np.diff(f.times)
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # backoff 0.1 then 0.2
    assert elapsed < 3


@pytest.mark.parametrize("behaviour", ["401", "400_echoes_token"])
def test_client_errors_are_not_retried_and_hide_the_token(fake, monkeypatch, behaviour):
    f = fake(behaviour)
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    remote = make_remote_reward({"url": f.url, "retries": 3, "backoff": 5.0, "timeout": 2}, None)
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError, match=f"after 1 attempt: HTTP {behaviour[:3]}") as e:
        remote(images(3), PROMPTS[:3])
    assert f.attempts == 1 and time.monotonic() - t0 < 2
    assert SECRET not in str(e.value)


def test_remote_params_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="needs params.url"):
        make_remote_reward({}, None)
    with pytest.raises(ValueError, match=r"unknown \['retry', 'timout'\]"):
        make_remote_reward({"url": "http://127.0.0.1:1", "timout": 3, "retry": 1}, None)
    for bad in ({"timeout": 0}, {"retries": -1}, {"retries": 1.5}, {"backoff": "x"}, {"format": "jpeg"},
                {"max_batch": 0}, {"url": "ftp://x"}, {"url": "http://user:pw@127.0.0.1:1"}):
        with pytest.raises(ValueError):
            make_remote_reward({"url": "http://127.0.0.1:1", **bad}, None)
    with pytest.raises(ValueError, match="NO_SUCH_TOKEN_VAR is not set"):
        make_remote_reward({"url": "http://127.0.0.1:1", "token_env": "NO_SUCH_TOKEN_VAR"}, None)
    remote = make_remote_reward({"url": "http://127.0.0.1:1/"}, None)
    assert remote.score_url == "http://127.0.0.1:1/score"
    with pytest.raises(ValueError, match="NaN"):
        remote(torch.full((2, 1, 8, 8), float("nan")), PROMPTS[:2])


# ---- training against the server ---------------------------------------------------------------------------------

def remote_spec(url: str, **params) -> str:
    opts = ", ".join(f"{k}: {v}" for k, v in params.items())
    return f"rewards=[{{name: remote, params: {{url: '{url}'{', ' + opts if opts else ''}}}}}]"


def test_training_through_the_server_matches_in_process_scoring(tmp_path, server):
    spec = remote_spec(server.url, timeout=10, max_batch=MAX_BATCH)
    run = train(tiny_cfg(tmp_path / "cache", spec, "train.epochs=2"), tmp_path / "remote", log=lambda *_: None)
    rs = rows(run)
    assert [r["epoch"] for r in rs] == [0, 1]
    assert all(math.isfinite(r["reward/remote_mean"]) for r in rs)
    ref = rows(train(tiny_cfg(tmp_path / "cache", "train.epochs=2"), tmp_path / "local", log=lambda *_: None))
    for a, b in zip(rs, ref):  # .npy carries float32 exactly: the same run as scoring in-process
        assert a["reward/remote_mean"] == pytest.approx(b["reward/ink_mean"], abs=1e-6)
        assert a["proxy_reward_mean"] == pytest.approx(b["proxy_reward_mean"], abs=1e-6)


def test_unreachable_server_stops_training_cleanly(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    cfg = tiny_cfg(tmp_path / "cache", remote_spec(url, retries=1, backoff=0.01, timeout=1),
                   "train.max_bad_batches=2", "train.epochs=5", "eval.every=0")
    messages: list = []
    t0 = time.monotonic()
    with pytest.raises(TrainingStopped, match="2 consecutive bad reward batches"):
        train(cfg, tmp_path / "run", log=messages.append)
    assert time.monotonic() - t0 < 30
    assert [r.get("skipped") for r in rows(tmp_path / "run")] == [True]
    assert any("RemoteRewardError" in m and url in m and "2 attempts" in m for m in messages), messages
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch_000001"]


def test_server_dying_mid_run_stops_training_cleanly(tmp_path, fake):
    f = fake("dies_after_one")  # scores epoch 0, then its socket is closed
    cfg = tiny_cfg(tmp_path / "cache", remote_spec(f.url, retries=1, backoff=0.01, timeout=1),
                   "train.max_bad_batches=2", "train.epochs=5", "eval.every=0")
    messages: list = []
    with pytest.raises(TrainingStopped, match="2 consecutive bad reward batches"):
        train(cfg, tmp_path / "run", log=messages.append)
    rs = rows(tmp_path / "run")
    assert [r.get("skipped", False) for r in rs] == [False, True]
    assert math.isfinite(rs[0]["reward/remote_mean"])
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == "epoch_000002"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_cli_server_stops_cleanly_on_ctrl_c_and_sigterm(tmp_path, sig):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "grpo_guard", "serve-reward", "ink", "--port", "0", "--set",
                             "resolution=8", "--cache-dir", str(tmp_path / "cache")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().startswith("serving reward ink on ")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "reward server stopped" in err and "Traceback" not in err
