"""What a request goes through, and the shared vocabulary of the simulator's modules.

Bucket bounds of the histograms, retry / timeout policies, failure causes, the hop sequence of every operation,
the per-request arrays of a chunk (:class:`Requests`) and the cumulative-counter arithmetic used by the meters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ingest.simulator.world import OP_CHAT_LARGE, OP_CHAT_SMALL, OP_EMBED, OP_PREDICT, OP_RAG

# explicit bucket bounds (seconds): OTel semconv advice for HTTP (three bounds fewer) and GenAI server metrics
HTTP_BOUNDS = np.array([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
LONG_BOUNDS = np.array(
    [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
)
TTFT_BOUNDS = np.array(
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
)
TPOT_BOUNDS = np.array([0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5])
SCORE_BOUNDS = np.round(np.arange(0.1, 1.0, 0.1), 1)

RETRIEVER_TIMEOUT_S = 2.0
RETRIEVER_ATTEMPTS = 3
RETRIEVER_BACKOFF_S = (0.25, 0.5)  # before the second and the third attempt
POOL_MAX_WAIT_S = 10.0  # rag-api sheds a request that waited this long for a vector-DB connection
QUEUE_TIMEOUT_S = 55.0
MAX_NUM_SEQS = 256
ROUTE_NOISE_SIGMA, ROUTE_NOISE_PHI = 0.12, 0.85  # hourly AR(1) log-noise per route

#: OTLP resource key of an instance's telemetry: instance * RES_STRIDE + index of its service.version
RES_STRIDE = 4096

# why a request failed (used for status messages and log templates)
(
    CAUSE_NONE,
    CAUSE_INTERNAL,
    CAUSE_QUEUE_FULL,
    CAUSE_QUEUE_TIMEOUT,
    CAUSE_BAD_MODEL,
    CAUSE_RETRIEVAL,
    CAUSE_RESET,
    CAUSE_POOL,
) = range(8)

# hops of each operation after the gateway: (service, role); roles "pool" (waiting for a connection to the
# vector DB) and "timeout" (giving up after the last retrieval attempt) are rag-api's own failure points
PATHS = {
    OP_CHAT_SMALL: (("llm-serving", "llm"),),
    OP_CHAT_LARGE: (("llm-serving", "llm"),),
    OP_RAG: (
        ("rag-api", "own"),
        ("embedder", "embed"),
        ("rag-api", "pool"),
        ("retriever", "retrieve"),
        ("rag-api", "timeout"),
        ("reranker", "rerank"),
        ("llm-serving", "llm"),
    ),
    OP_EMBED: (("embedder", "embed"),),
    OP_PREDICT: (("predictor", "own"), ("feature-store", "features")),
}


@dataclass
class Requests:
    """One row per request of the chunk (numpy arrays, all the same length)."""

    route: np.ndarray
    minute: np.ndarray  # index within the chunk
    second: np.ndarray  # offset within the minute
    op: np.ndarray
    region: np.ndarray
    tenant: np.ndarray
    version: np.ndarray  # index into Engine.versions
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    inst: dict[str, np.ndarray] = field(default_factory=dict)  # per service, -1 when not on the path
    dur: dict[str, np.ndarray] = field(default_factory=dict)  # seconds, per hop role
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.route.size


def cumulate(inc: np.ndarray, reset: np.ndarray, carry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative sums along axis 1 that restart at ``reset`` minutes (the restart minute counts afresh).

    Examples
    --------
    >>> cum, last = cumulate(np.array([[1, 1, 1, 1]]), np.array([[False, False, True, False]]), np.array([5]))
    >>> cum.tolist(), last.tolist()
    ([[6, 7, 1, 2]], [2])
    """
    nm = inc.shape[1]
    total = np.cumsum(inc, axis=1) + carry[:, None, ...]
    before = total - inc
    last = np.maximum.accumulate(np.where(reset, np.arange(nm)[None, :], -1), axis=1)
    idx = np.maximum(last, 0).reshape(last.shape + (1,) * (inc.ndim - 2))
    base = np.take_along_axis(before, idx, axis=1)
    base = np.where((last >= 0).reshape(idx.shape), base, 0)
    cum = total - base
    return cum, cum[:, -1].copy()


def last_reset(reset: np.ndarray, carry: np.ndarray) -> np.ndarray:
    """Index (chunk-relative; the carried value when none) of the latest reset at or before each minute."""
    nm = reset.shape[1]
    last = np.maximum.accumulate(np.where(reset, np.arange(nm)[None, :], -(10**9)), axis=1)
    return np.where(last > -(10**9), last, carry[:, None])


USAGE_METRICS = ("requests", "errors", "input_tokens", "output_tokens", "cost_usd", "latency_ms_sum")
NUMBER_METRICS = ("requests", "errors", "process.memory.usage")
PROM_FAMILIES = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_SM_CLOCK",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:gpu_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)
