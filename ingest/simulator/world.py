"""The simulated ML platform: regions, services, models, tenants, routes and instances.

Everything here is fixed for a run and drawn once from the seed; time-varying behaviour (demand, incidents,
changes) lives in :mod:`ingest.simulator.plan` and :mod:`ingest.simulator.engine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.simulator.sources import Sources

REGIONS = ("us-east", "us-west", "eu-west")
REGION_WEIGHT = np.array([0.45, 0.30, 0.25])
#: local time drives the daily shape, so each region peaks at its own afternoon
REGION_UTC_OFFSET_MIN = np.array([-300, -480, 0])
#: Monday..Sunday demand factors (interpolated between local noons, so there is no step at midnight)
WEEKDAY_FACTOR = np.array([1.0, 1.03, 1.04, 1.03, 0.97, 0.78, 0.72])

#: platform requests per minute at scale 1 (before seasonality and growth)
BASE_RATE_PER_MIN = 3000.0
TENANTS_AT_SCALE_1 = 200
ZIPF_EXPONENT = 1.1
#: sizing: instances are provisioned so that the busiest minute of a normal day runs at this utilisation
TARGET_UTILISATION = 0.5
PEAK_FACTOR = 1.35
#: a GPU node batches at least this many sequences (small fleets are under-used, as real minimum fleets are)
MIN_CONCURRENCY = 8.0
POOL_UTILISATION = 0.009


@dataclass(frozen=True)
class ServiceSpec:
    """Static behaviour of one service."""

    name: str
    version: str  # initial service.version
    median_ms: float  # own processing time per request at low load
    sigma: float  # log-normal shape of that time
    capacity_per_min: float  # requests per minute per instance at which queueing starts
    min_instances: int
    base_error: float  # probability a request fails here on a normal day
    memory_mb: float  # steady resident memory
    memory_limit_mb: float


SERVICES = (
    ServiceSpec("gateway", "1.32.0", 6.0, 0.35, 1500, 2, 0.0004, 600, 2048),
    ServiceSpec("rag-api", "2.14.1", 14.0, 0.4, 350, 1, 0.0008, 1100, 3072),
    ServiceSpec("retriever", "1.9.4", 22.0, 0.45, 900, 1, 0.0006, 5200, 12288),
    ServiceSpec("embedder", "0.18.2", 11.0, 0.35, 1600, 1, 0.0004, 2400, 6144),
    ServiceSpec("reranker", "0.7.0", 34.0, 0.4, 700, 1, 0.0004, 1900, 4096),
    ServiceSpec("llm-serving", "0.6.3", 0.0, 0.0, 0, 2, 0.0015, 9000, 24576),
    ServiceSpec("predictor", "3.2.0", 5.0, 0.35, 1200, 1, 0.0004, 850, 2048),
    ServiceSpec("feature-store", "1.11.0", 4.5, 0.5, 1800, 1, 0.0008, 1400, 4096),
)
SERVICE_NAMES = tuple(s.name for s in SERVICES)
SVC = {name: i for i, name in enumerate(SERVICE_NAMES)}

#: caller -> callee edges (also derivable from the traces)
TOPOLOGY = (
    ("gateway", "llm-serving"),
    ("gateway", "rag-api"),
    ("gateway", "embedder"),
    ("gateway", "predictor"),
    ("rag-api", "embedder"),
    ("rag-api", "retriever"),
    ("rag-api", "reranker"),
    ("rag-api", "llm-serving"),
    ("predictor", "feature-store"),
)


@dataclass(frozen=True)
class Operation:
    """A tenant-facing API: what the gateway routes, which model answers and which services it crosses."""

    name: str  # the `operation` label
    model: str
    route: str  # gateway http.route
    share: float  # share of platform requests
    path: tuple[str, ...]  # services after the gateway, in call order
    tokens: str  # token pool
    daily: str  # servegen model whose time-of-day shape it follows


OPERATIONS = (
    Operation("chat", "m-small", "/v1/chat/completions", 0.36, ("llm-serving",), "azure_code", "m-small"),
    Operation("chat", "m-large", "/v1/chat/completions", 0.20, ("llm-serving",), "azure_conv", "m-large"),
    Operation(
        "rag",
        "m-large",
        "/v1/rag/query",
        0.16,
        ("rag-api", "embedder", "retriever", "reranker", "llm-serving"),
        "rag",
        "m-large",
    ),
    Operation("embeddings", "m-embed", "/v1/embeddings", 0.16, ("embedder",), "azure_conv", "m-mid"),
    Operation("predict", "m-risk", "/v1/predict", 0.12, ("predictor", "feature-store"), "", "m-mid"),
)
OP_CHAT_SMALL, OP_CHAT_LARGE, OP_RAG, OP_EMBED, OP_PREDICT = range(len(OPERATIONS))


@dataclass(frozen=True)
class LlmSpec:
    """A model served by llm-serving (one vLLM engine per GPU node)."""

    name: str
    prefill_tps: float  # prompt tokens per second per sequence at low load
    tpot_s: float  # seconds per output token at low load
    price_in: float  # USD per million input tokens
    price_out: float
    gpu: str
    gpu_mem_mib: int


LLMS = (
    LlmSpec("m-small", 24_000, 0.011, 0.20, 0.60, "NVIDIA L40S", 46_068),
    LlmSpec("m-large", 7_000, 0.032, 3.00, 15.00, "NVIDIA H100 80GB HBM3", 81_559),
)
LLM_INDEX = {m.name: i for i, m in enumerate(LLMS)}
#: price of the non-LLM APIs
EMBED_PRICE_PER_M = 0.02
PREDICT_PRICE = 0.0001
#: every model and its first version; later versions come from rollouts in the plan
MODELS = ("m-small", "m-large", "m-embed", "m-rerank", "m-risk")
INITIAL_VERSION = {"m-small": 17, "m-large": 42, "m-embed": 3, "m-rerank": 5, "m-risk": 9}


@dataclass
class World:
    """Tenants, routes (tenant x operation x region) and instances of one run."""

    scale: float
    tenants: list[str]
    tenant_weight: np.ndarray  # share of platform traffic
    tenant_growth: np.ndarray  # demand growth per day (log scale)
    tenant_u: np.ndarray  # uniform(0, 1) used to pick canary cohorts
    route_tenant: np.ndarray
    route_op: np.ndarray
    route_region: np.ndarray
    route_rate: np.ndarray  # requests per minute at demand profile 1
    inst_service: np.ndarray
    inst_region: np.ndarray
    inst_model: np.ndarray  # LLM index for llm-serving nodes, else -1
    inst_name: list[str]  # service.instance.id
    inst_host: list[str]  # host.name
    inst_memory_mb: np.ndarray
    inst_concurrency: np.ndarray  # LLM nodes: concurrent sequences; rag-api: vector-DB connections
    inst_kv_tokens: np.ndarray  # LLM nodes: KV-cache capacity in tokens
    service_instances: dict[tuple[int, int], np.ndarray]  # (service, region) -> instances
    llm_nodes: dict[tuple[int, int], np.ndarray]  # (llm, region) -> nodes
    op_service_s: np.ndarray  # mean LLM service seconds per request, by operation
    op_kv_token_s: np.ndarray  # mean (tokens x seconds) KV footprint per request, by operation
    sources: Sources

    @property
    def n_instances(self) -> int:
        return self.inst_service.size

    def demand_profile(self, epoch_minutes: np.ndarray) -> np.ndarray:
        """Seasonal demand factor, shape (operations, regions, minutes), mean about 1."""
        local = epoch_minutes[None, :] + REGION_UTC_OFFSET_MIN[:, None]  # (regions, minutes)
        minute_of_day = (local % 1440).astype(np.int64)
        # 1970-01-01 was a Thursday: (day + 3) % 7 == 0 on Mondays; factors interpolate between local noons
        week_pos = ((local // 1440 + 3) % 7) * 1440 + minute_of_day
        weekly = np.interp(week_pos, np.arange(7) * 1440 + 720, WEEKDAY_FACTOR, period=7 * 1440)
        out = np.empty((len(OPERATIONS), len(REGIONS), epoch_minutes.size))
        for i, op in enumerate(OPERATIONS):
            out[i] = self.sources.daily[op.daily][minute_of_day] * weekly
        return out


def llm_service_seconds(op: Operation, inp: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Seconds of GPU-engine time one request occupies on an idle node."""
    spec = LLMS[LLM_INDEX[op.model]]
    return inp / spec.prefill_tps + out * spec.tpot_s


def build_world(sources: Sources, scale: float, rng: np.random.Generator) -> World:
    """Draw tenants, their routes and the fleet sized for them."""
    n_t = max(8, round(TENANTS_AT_SCALE_1 * scale))
    width = max(4, len(str(n_t)))
    tenants = [f"t-{i:0{width}d}" for i in range(1, n_t + 1)]
    rank = rng.permutation(n_t)
    weight = 1.0 / (rank + 1.0) ** ZIPF_EXPONENT
    weight /= weight.sum()
    growth = rng.normal(0.006, 0.008, n_t)
    u = rng.random(n_t)

    n_ops, n_reg = len(OPERATIONS), len(REGIONS)
    home = rng.choice(n_reg, size=n_t, p=REGION_WEIGHT)
    region_w = np.zeros((n_t, n_reg))
    region_w[np.arange(n_t), home] = 1.0
    top = rank < max(1, round(0.1 * n_t))
    mid = ~top & (rank < max(2, round(0.3 * n_t)))
    region_w[top] = 0.2
    region_w[top, home[top]] = 0.6
    other = (home + rng.integers(1, n_reg, n_t)) % n_reg
    region_w[mid, home[mid]] = 0.75
    region_w[mid, other[mid]] = 0.25

    share = np.array([op.share for op in OPERATIONS])
    uses = rng.random((n_t, n_ops)) < np.array([0.9, 0.6, 0.45, 0.5, 0.35])
    uses[top] = True
    uses[~uses.any(axis=1), OP_CHAT_SMALL] = True
    op_w = rng.dirichlet(4.0 * share / share.min(), size=n_t) * uses
    op_w /= op_w.sum(axis=1, keepdims=True)

    rate = BASE_RATE_PER_MIN * scale * weight[:, None, None] * op_w[:, :, None] * region_w[:, None, :]
    t_idx, o_idx, g_idx = np.nonzero(rate > 0)
    route_rate = rate[t_idx, o_idx, g_idx]

    # mean LLM footprint per request by operation, from the token pools
    op_service_s = np.zeros(n_ops)
    op_kv = np.zeros(n_ops)
    for i, op in enumerate(OPERATIONS):
        if "llm-serving" in op.path:
            inp, out = sources.pools[op.tokens].sample(np.random.default_rng(0), 50_000)  # fixed: sizing only
            svc = llm_service_seconds(op, inp, out)
            op_service_s[i] = svc.mean()
            op_kv[i] = ((inp + out / 2.0) * svc).mean()

    inst_service: list[int] = []
    inst_region: list[int] = []
    inst_model: list[int] = []
    names: list[str] = []
    hosts: list[str] = []
    conc: list[float] = []
    kv: list[float] = []
    service_instances: dict[tuple[int, int], np.ndarray] = {}
    llm_nodes: dict[tuple[int, int], np.ndarray] = {}
    gpu_counter = 0
    cpu_counter = 0
    for s, spec in enumerate(SERVICES):
        for g, region in enumerate(REGIONS):
            in_region = g_idx == g
            first = len(inst_service)
            if spec.name == "llm-serving":
                for m, llm in enumerate(LLMS):
                    ops = [
                        i
                        for i, op in enumerate(OPERATIONS)
                        if op.model == llm.name and "llm-serving" in op.path
                    ]
                    sel = in_region & np.isin(o_idx, ops)
                    work = PEAK_FACTOR * (route_rate[sel] * op_service_s[o_idx[sel]]).sum()  # engine-s / min
                    kv_load = PEAK_FACTOR * (route_rate[sel] * op_kv[o_idx[sel]]).sum() / 60.0
                    n = max(spec.min_instances, int(np.ceil(work / (60.0 * 96 * TARGET_UTILISATION))))
                    node_first = len(inst_service)
                    for _ in range(n):
                        gpu_counter += 1
                        inst_service.append(s)
                        inst_region.append(g)
                        inst_model.append(m)
                        names.append(f"gpu-node-{gpu_counter}")
                        hosts.append(f"gpu-node-{gpu_counter}")
                        conc.append(max(MIN_CONCURRENCY, work / (60.0 * n * TARGET_UTILISATION)))
                        kv.append(max(20_000.0, kv_load / n / 0.55))
                    llm_nodes[(m, g)] = np.arange(node_first, len(inst_service))
            else:
                sel = in_region & np.isin(
                    o_idx,
                    [i for i, op in enumerate(OPERATIONS) if spec.name in op.path or spec.name == "gateway"],
                )
                peak = PEAK_FACTOR * route_rate[sel].sum()
                n = max(spec.min_instances, int(np.ceil(peak / (spec.capacity_per_min * TARGET_UTILISATION))))
                # rag-api: vector-DB connection pool (connections = seconds of retrieval per second) sized so a
                # normal peak keeps it POOL_UTILISATION busy
                pool = PEAK_FACTOR * route_rate[in_region & (o_idx == OP_RAG)].sum() * 0.03 / 60.0 / n
                for i in range(n):
                    cpu_counter += 1
                    inst_service.append(s)
                    inst_region.append(g)
                    inst_model.append(-1)
                    names.append(f"{spec.name}-{region}-{i}")
                    hosts.append(f"{region}-cpu-{cpu_counter:03d}")
                    conc.append(max(pool / POOL_UTILISATION, 1e-3) if spec.name == "rag-api" else 0.0)
                    kv.append(0.0)
            service_instances[(s, g)] = np.arange(first, len(inst_service))

    inst_service_a = np.array(inst_service)
    mem = np.array([SERVICES[s].memory_mb for s in inst_service_a]) * rng.uniform(
        0.9, 1.1, inst_service_a.size
    )
    return World(
        scale=scale,
        tenants=tenants,
        tenant_weight=weight,
        tenant_growth=growth,
        tenant_u=u,
        route_tenant=t_idx,
        route_op=o_idx,
        route_region=g_idx,
        route_rate=route_rate,
        inst_service=inst_service_a,
        inst_region=np.array(inst_region),
        inst_model=np.array(inst_model),
        inst_name=names,
        inst_host=hosts,
        inst_memory_mb=mem,
        inst_concurrency=np.array(conc),
        inst_kv_tokens=np.array(kv),
        service_instances=service_instances,
        llm_nodes=llm_nodes,
        op_service_s=op_service_s,
        op_kv_token_s=op_kv,
        sources=sources,
    )
