"""Scraper against real HTTP servers on 127.0.0.1, storing into a real DuckDB file."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ingest.scrape import Scraper, ScrapeTarget


class Exporter:
    """A scripted ``/metrics`` server: ``mode`` is ok | gzip | bad_gzip | error | hang."""

    def __init__(self, mode: str, body: bytes = b"") -> None:
        self.mode = mode
        self.body = body
        self.requests: list[dict[str, str]] = []
        self.hanging = threading.Event()  # set while a request hangs
        self.release = threading.Event()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                exporter.requests.append(dict(self.headers))
                if exporter.mode == "hang":
                    exporter.hanging.set()
                    exporter.release.wait(30)
                    return
                if exporter.mode == "error":
                    self.send_error(500, "exporter crashed")
                    return
                body = exporter.body
                if exporter.mode == "gzip":
                    body = gzip.compress(body)
                elif exporter.mode == "bad_gzip":
                    body = b"definitely not gzip"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                if exporter.mode in ("gzip", "bad_gzip"):
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exporters():
    made: list[Exporter] = []

    def make(mode: str, body: bytes = b"") -> Exporter:
        made.append(Exporter(mode, body))
        return made[-1]

    yield make
    for e in made:
        e.close()


@pytest.fixture
def client_target():
    """prometheus_client's own exposition server on a free loopback port, with a few metrics."""
    reg = CollectorRegistry()
    metrics = {
        "tokens": Counter("vllm:prompt_tokens", "Prompt tokens.", ["model_name"], registry=reg),
        "running": Gauge("vllm:num_requests_running", "Running.", ["model_name"], registry=reg),
        "ttft": Histogram(
            "vllm:time_to_first_token_seconds", "TTFT.", ["model_name"], buckets=[0.1, 1.0], registry=reg
        ),
        "shadow": Gauge("shadowed", "Exposes its own instance label.", ["instance"], registry=reg),
    }
    metrics["tokens"].labels("llama").inc(42)
    metrics["running"].labels("llama").set(3)
    metrics["ttft"].labels("llama").observe(0.05)
    metrics["ttft"].labels("llama").observe(0.5)
    metrics["shadow"].labels("pod-7").set(1)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    yield f"http://127.0.0.1:{server.server_port}/metrics", metrics
    server.shutdown()
    server.server_close()
    thread.join(5)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


def stored(store, metric: str) -> list[tuple]:
    """(service, labels, value) of every point of ``metric``, by time."""
    return (
        store.cursor()
        .execute(
            """SELECT s.service, s.labels, p.value FROM series s JOIN points p USING (series_id)
           WHERE s.metric = ? ORDER BY p.ts, CAST(s.labels AS VARCHAR)""",
            [metric],
        )
        .fetchall()
    )


def test_scrape_prometheus_client_target_into_store(store, client_target):
    url, _ = client_target
    instance = url.split("/")[2]
    target = ScrapeTarget(url, service="vllm", labels={"region": "eu-1"})
    [result] = Scraper([target], sink=store.append, timeout_s=5).scrape_once()

    assert (result.ok, result.error, result.rejected) == (True, None, 0)
    assert result.samples == 4  # counter, gauge, histogram point, shadowed gauge (the _created ones ignored)
    assert 0 < result.duration < 5
    labels = {"model_name": "llama", "region": "eu-1", "instance": instance}
    assert stored(store, "vllm:prompt_tokens_total") == [("vllm", labels, 42.0)]
    assert stored(store, "vllm:num_requests_running") == [("vllm", labels, 3.0)]
    hist = (
        store.cursor()
        .execute(
            "SELECT s.labels, h.bounds, h.counts, h.count FROM series s JOIN histograms h USING (series_id)"
        )
        .fetchall()
    )
    assert hist == [(labels, [0.1, 1.0], [1.0, 1.0, 0.0], 2.0)]
    # the target's instance wins; the exposed one is kept as exported_instance (Prometheus honor_labels: false)
    assert stored(store, "shadowed") == [
        ("vllm", {"exported_instance": "pod-7", "instance": instance, "region": "eu-1"}, 1.0)
    ]
    assert stored(store, "up") == [("vllm", {"region": "eu-1", "instance": instance}, 1.0)]
    [(_, _, duration)] = stored(store, "scrape_duration_seconds")
    assert duration == pytest.approx(result.duration, abs=1e-5)


def test_requests_text_format_and_decodes_gzip(store, exporters):
    body = b'# TYPE nv_gpu_utilization gauge\nnv_gpu_utilization{gpu_uuid="GPU-1"} 0.75\n'
    exporter = exporters("gzip", body)
    [result] = Scraper([ScrapeTarget(exporter.url, service="triton")], sink=store.append).scrape_once()

    assert result.ok, result.error
    headers = {k.lower(): v for k, v in exporter.requests[0].items()}
    assert headers["accept"].startswith("text/plain;version=0.0.4")
    assert "gzip" in headers["accept-encoding"]
    assert [(s, labels["gpu_uuid"], v) for s, labels, v in stored(store, "nv_gpu_utilization")] == [
        ("triton", "GPU-1", 0.75)
    ]


def test_failed_targets_record_up_zero_and_do_not_hold_up_the_others(store, exporters):
    good = exporters("ok", b"vllm:num_requests_waiting 5\n")
    broken = exporters("error")
    hung = exporters("hang")
    bad_gzip = exporters("bad_gzip", b"x 1\n")
    refused = closed_port_url()
    targets = [
        ScrapeTarget(u, service="svc") for u in (good.url, broken.url, hung.url, bad_gzip.url, refused)
    ]

    t0 = time.monotonic()
    results = Scraper(targets, sink=store.append, timeout_s=0.5).scrape_once()
    elapsed = time.monotonic() - t0

    assert [r.ok for r in results] == [True, False, False, False, False]
    assert results[1].error == "HTTP 500 exporter crashed"
    assert results[2].error == "timed out after 0.5s" and 0.45 <= results[2].duration < 2.0
    assert results[3].error.startswith("bad gzip body")
    assert results[4].error.startswith("cannot connect")
    assert elapsed < 2.0  # targets are scraped concurrently, each within its timeout
    up = {labels["instance"]: v for _, labels, v in stored(store, "up")}
    assert up == {t.url.split("/")[2]: (1.0 if t is targets[0] else 0.0) for t in targets}
    assert stored(store, "vllm:num_requests_waiting")[0][2] == 5.0


def test_background_loop_scrapes_on_a_fixed_grid_and_stops_promptly(store, client_target):
    url, metrics = client_target
    calls: list[float] = []

    def sink(batch):
        calls.append(time.monotonic())
        metrics["tokens"].labels("llama").inc(1)  # the next scrape sees a new value
        store.append(batch)
        time.sleep(0.12)  # a slow sink: a scheduler that sleeps interval_s after each round drifts 0.24 grid/round

    # 0.5 s rounds: the grid check below tolerates 0.15 s of scheduling jitter on a loaded CI machine
    scraper = Scraper([ScrapeTarget(url, service="vllm")], sink=sink, interval_s=0.5, timeout_s=1)
    scraper.start()
    deadline = time.monotonic() + 15
    while len(calls) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    scraper.stop()
    assert time.monotonic() - t0 < 1.0
    n = len(calls)
    assert n >= 6
    time.sleep(0.6)
    assert len(calls) == n  # nothing is handed to the sink after stop()

    # rounds sit on a 0.5 s grid: lateness of one round does not push the later ones (no drift); a sleep of
    # interval_s after each round would drift by the round's duration every time
    grid = [(t - calls[0]) / 0.5 for t in calls]
    assert all(abs(g - round(g)) < 0.3 for g in grid), grid
    assert len({round(g) for g in grid}) == n
    values = [v for _, _, v in stored(store, "vllm:prompt_tokens_total")]
    assert values == [42.0 + k for k in range(n)]
    assert [v for _, _, v in stored(store, "up")] == [1.0] * n
    assert all(r.ok for r in scraper.last_results)


def test_stop_is_prompt_while_a_target_hangs(store, exporters):
    hung = exporters("hang")
    calls = []
    scraper = Scraper([ScrapeTarget(hung.url)], sink=calls.append, interval_s=0.05, timeout_s=5)
    scraper.start()
    assert hung.hanging.wait(5)
    t0 = time.monotonic()
    scraper.stop()
    assert time.monotonic() - t0 < 0.5
    assert calls == []  # the abandoned round is not handed to the sink


def test_target_job_label_names_the_service_when_no_service_is_given(store, exporters):
    exporter = exporters("ok", b"queue_depth 4\n")
    scraper = Scraper([ScrapeTarget(exporter.url, labels={"job": "ray-serve"})], sink=store.append)
    scraper.scrape_once()
    assert {(s, "job" in labels) for s, labels, _ in stored(store, "queue_depth") + stored(store, "up")} == {
        ("ray-serve", False)
    }


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="positive"):
        Scraper([], sink=print, interval_s=0)
