"""ML-platform telemetry simulator: the demo's data source and the fixture of every later feature.

``simulate(out, days=3, seed=0, scale=1)`` writes, under ``out``:

- ``telemetry/metrics/otlp_metrics_*.json`` — OTLP/JSON metrics per service instance (requests, errors,
  duration histograms, memory, CPU; GenAI TTFT / time-per-output-token histograms on GPU nodes; the predictor's
  score histogram), cumulative temporality, ≤ 50 MB per file;
- ``telemetry/metrics/tenant_usage_*.parquet`` — per tenant × operation × model × version × region and minute
  (requests, errors, tokens, cost, latency sum) in the long format ``ts, metric, value, service, <labels>``;
- ``telemetry/prometheus/gpu_nodes_*.prom`` — DCGM exporter and vLLM samples of the GPU nodes, with timestamps;
- ``telemetry/traces/otlp_traces_*.json`` and ``telemetry/logs/otlp_logs_*.json`` — OTLP/JSON;
- ``telemetry/events.jsonl`` (change events) and ``telemetry/topology.jsonl`` (service edges);
- ``labels/incidents.json`` — the injected incidents (ground truth), kept out of ``telemetry/``;
- ``manifest.json`` — files, counts and period.

Modules: :mod:`~ingest.simulator.sources` (the real traces it samples: Azure LLM inference 2023 and Mooncake
token lengths, ServeGen time-of-day demand), :mod:`~ingest.simulator.world` (regions, services, models, tenants,
routes, fleet), :mod:`~ingest.simulator.plan` (incidents = ground truth, and change events),
:mod:`~ingest.simulator.engine` (per-request simulation of each time chunk), :mod:`~ingest.simulator.flows`
(request paths, policies, shared arrays), :mod:`~ingest.simulator.meters` (what exporters report),
:mod:`~ingest.simulator.traces` / :mod:`~ingest.simulator.logs` (sampled spans, log records),
:mod:`~ingest.simulator.otlp_json` / :mod:`~ingest.simulator.writers` (rendering and files) and
:mod:`~ingest.simulator.run` (:func:`simulate`).

Time: 1-minute resolution. OTLP points and Prometheus samples are stamped at the end of their minute (what an
exporter reports then); Parquet usage rows at the start of the minute they aggregate; spans and logs at their
own instant. The default period ends at :data:`DEFAULT_END` (2026-11-01T00:00Z) so runs never depend on the clock.
"""

from ingest.simulator.plan import KINDS
from ingest.simulator.run import DEFAULT_END, simulate

__all__ = ["DEFAULT_END", "KINDS", "simulate"]
