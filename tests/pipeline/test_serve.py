"""The registered champion behind the real ``mlflow models serve`` (slow: `make test-serve`).

Starts ``mlflow models serve -m models:/puma-retriever@champion --env-manager local --host 127.0.0.1``
on a free port against a sqlite registry holding the tiny retriever, then over HTTP:
- ``POST /invocations`` with ``{"dataframe_split": ...}`` equals ``PumaRetriever.encode_query`` /
  ``encode_document`` within 1e-5 for text, image (base64 PNG and JPEG) and mixed rows;
- bad requests (unknown role, undecodable image, missing column, ...) get HTTP 400 with our message;
- ``SERVE_CLIENTS`` (20) concurrent clients for ``SERVE_LOAD_S`` (30) seconds: no error, every answer
  right; p50/p99 latency and requests/s are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.pipeline.pyfunc_helpers import image_b64, register_champion

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COLUMNS = ["text", "image", "instruction", "role"]
CLIENTS = int(os.environ.get("SERVE_CLIENTS", "20"))
LOAD_S = float(os.environ.get("SERVE_LOAD_S", "30"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _split(rows: list[dict]) -> bytes:
    """The ``dataframe_split`` request body for rows with the four columns (missing cells null)."""
    return json.dumps({"dataframe_split": {"columns": COLUMNS,
                                           "data": [[r.get(c) for c in COLUMNS] for r in rows]}}).encode()


def _expected(retriever, rows: list[dict]) -> np.ndarray:
    """What the encoder gives for the same rows, in process (queries and documents kept in row order)."""
    from PIL import Image

    out = []
    for r in rows:
        item = {"text": r.get("text")}
        if r.get("image"):
            item["image"] = Image.open(io.BytesIO(base64.b64decode(r["image"])))
        if r["role"] == "query":
            item["instruction"] = r.get("instruction")
            out.append(retriever.encode_query([item])[0])
        else:
            out.append(retriever.encode_document([item])[0])
    return np.asarray(out, dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir):
    """(invocations URL, retriever) for a running ``mlflow models serve`` of the champion."""
    from puma import tracking
    from puma.model.retriever import PumaRetriever

    root = tmp_path_factory.mktemp("serve")
    settings = register_champion(root, tiny_dir)
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.resolve_uri(settings.tracking.uri, root),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{settings.tracking.model_name}@champion",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"server exited {proc.returncode}:\n{(root / 'serve.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no answer on /ping:\n{(root / 'serve.log').read_text()[-3000:]}"
            time.sleep(1)
        print(f"\nserving: {' '.join(cmd)}  (up in {240 - (deadline - time.monotonic()):.0f}s)")
        yield f"http://127.0.0.1:{port}/invocations", PumaRetriever.from_pretrained(tiny_dir)
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


RED_PNG, BLUE_JPEG = image_b64("red"), image_b64((30, 30, 220), "JPEG")
CASES = {
    "text": [{"text": "a red car", "instruction": "Find a caption.", "role": "query"},
             {"text": "A red car parked on a street.", "role": "document"}],
    "image": [{"image": RED_PNG, "instruction": "Find a similar image.", "role": "query"},
              {"image": BLUE_JPEG, "role": "document"}],
    "mixed": [{"text": "a blue boat", "image": BLUE_JPEG, "role": "query"},
              {"text": "a boat on a lake", "role": "document"},
              {"text": "a red square", "image": RED_PNG, "instruction": "Find it.", "role": "query"},
              {"image": RED_PNG, "role": "document"}],
}


@pytest.mark.parametrize("case", list(CASES))
def test_invocations_equal_the_encoder(server, case):
    url, retriever = server
    status, body = _post(url, _split(CASES[case]))
    assert status == 200, body[:2000]
    got = np.asarray(json.loads(body)["predictions"], dtype=np.float32)
    assert got.shape == (len(CASES[case]), retriever.get_sentence_embedding_dimension())
    np.testing.assert_allclose(got, _expected(retriever, CASES[case]), atol=1e-5)
    print(f"{case}: {got.shape[0]} rows equal encode_query/encode_document (max |diff| "
          f"{np.abs(got - _expected(retriever, CASES[case])).max():.2e})")


BAD = {
    "unknown role": (_split([{"text": "a", "role": "passage"}]), "role must be 'query' or 'document'"),
    "undecodable image": (_split([{"image": base64.b64encode(b"not an image").decode(), "role": "query"}]),
                          "not a decodable PNG or JPEG"),
    "not base64": (_split([{"image": "%%%", "role": "document"}]), "not valid base64"),
    "missing column": (json.dumps({"dataframe_split": {"columns": ["text", "image", "instruction"],
                                                       "data": [["a", None, None]]}}).encode(),
                       "Model is missing inputs ['role']"),
    "no text or image": (_split([{"instruction": "Find it.", "role": "query"}]), "needs text or an image"),
    "not JSON": (b"{not json", "Ensure that input is a valid JSON formatted string"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_is_a_400_with_a_clear_message(server, case):
    url, _ = server
    body, message = BAD[case]
    start = time.monotonic()
    status, answer = _post(url, body, timeout=30)
    assert status == 400, (status, answer[:2000])
    err = json.loads(answer)
    assert err["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), err
    assert message in err["message"], err["message"][:2000]
    said = err["message"].split("Error: ", 1)[-1].splitlines()[0]  # the server prefixes the request's repr
    print(f"{case}: HTTP {status} {err['error_code']} in {time.monotonic() - start:.2f}s: {said[:160]}")


def test_concurrent_clients(server):
    """CLIENTS threads post mixed requests for LOAD_S seconds; every answer is a 200 with the right rows."""
    url, retriever = server
    payloads = [(_split(rows), _expected(retriever, rows)) for rows in CASES.values()]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + LOAD_S

    def client(i: int) -> None:
        n = i
        while time.monotonic() < stop:
            body, want = payloads[n % len(payloads)]
            n += 1
            t0 = time.perf_counter()
            try:
                status, answer = _post(url, body, timeout=60)
                dt = time.perf_counter() - t0
                if status != 200:
                    raise AssertionError(f"HTTP {status}: {answer[:300]!r}")
                got = np.asarray(json.loads(answer)["predictions"], dtype=np.float32)
                if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
                    raise AssertionError("wrong embeddings")
            except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                with lock:
                    errors.append(f"client {i}: {e}")
                continue
            with lock:
                latencies.append(dt)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert not errors, errors[:5]
    assert latencies, "no request completed"
    lat = np.asarray(latencies) * 1000
    print(f"load: {CLIENTS} clients x {elapsed:.1f}s: {len(lat)} requests, 0 errors, {len(lat) / elapsed:.1f} req/s, "
          f"latency p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms, "
          f"max {lat.max():.0f} ms (load average {os.getloadavg()[0]:.2f})")
