"""`rootwise serve --config`: token, scrape targets and the receiver wired together in one process."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from ingest.store import Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_serve_with_config_scrapes_and_requires_the_token(tmp_path, serve_process):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    gauge = prometheus_client.Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilisation", ["gpu"], registry=registry)
    gauge.labels(gpu="0").set(87)
    exporter_port = _free_port()
    exporter, exporter_thread = prometheus_client.start_http_server(exporter_port, addr="127.0.0.1",
                                                                    registry=registry)
    cfg = tmp_path / "rootwise.toml"
    cfg.write_text(
        '[server]\ntoken = "${RW_TEST_INGEST_TOKEN}"\n'
        f'[[scrape]]\nurl = "http://127.0.0.1:{exporter_port}/metrics"\nservice = "gpu-node-1"\ninterval_s = 0.5\n'
    )
    db = tmp_path / "serve.duckdb"
    token = "tok-" + "x" * 20
    base, proc = serve_process(db, "--config", str(cfg), env={"RW_TEST_INGEST_TOKEN": token})
    try:
        payload = json.dumps({"resourceMetrics": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "rag-api"}}]},
            "scopeMetrics": [{"metrics": [{"name": "queue_depth", "gauge": {"dataPoints": [
                {"timeUnixNano": str(time.time_ns()), "asDouble": 3}]}}]}],
        }]}).encode()
        url = f"{base}/v1/metrics"
        assert _post(url, payload, None) == 401
        assert _post(url, payload, "wrong") == 401
        assert _post(url, payload, token) == 200
        # decoding happens in worker processes: their errors still come back as a clear 400
        assert _post(url, payload[:-7], token) == 400
        time.sleep(2.0)  # four scrape intervals
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        exporter.shutdown()
    assert proc.returncode == 0, out + err
    assert token not in out + err  # the secret never reaches the log
    with Store(db) as store:
        rows = store.cursor().execute(
            "SELECT s.service, s.metric, p.value FROM points p JOIN series s USING (series_id) "
            "WHERE s.metric IN ('DCGM_FI_DEV_GPU_UTIL', 'queue_depth', 'up') ORDER BY p.ts"
        ).fetchall()
    assert ("rag-api", "queue_depth", 3.0) in rows
    assert ("gpu-node-1", "DCGM_FI_DEV_GPU_UTIL", 87.0) in rows
    assert ("gpu-node-1", "up", 1.0) in rows


def test_serve_on_a_taken_port_says_so(tmp_path):
    """A taken port is a one-line error (exit 2), not a traceback, and the store it opened is closed again."""
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        db = tmp_path / "x.duckdb"
        proc = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve", "--db", str(db), "--port", str(port), "--no-scheduler",
             "--decode-workers", "0"],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    Store(db).close()  # not left locked or half-written
