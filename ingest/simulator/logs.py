"""Logs of one chunk, rendered as OTLP/JSON log records from fixed templates with variable parts.

Errors of failed requests (rate-limited per instance and minute, linked to their trace when it was sampled), vLLM
periodic stats, KV-cache preemption warnings, CUDA OOMs, GPU throttling, restarts and OOM kills, retrieval
timeouts, rate-limit and feature-quality warnings, the prompt template in use, and routine chatter.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ingest.simulator.engine import Chunk, Engine
from ingest.simulator.flows import (
    CAUSE_BAD_MODEL,
    CAUSE_INTERNAL,
    CAUSE_POOL,
    CAUSE_QUEUE_FULL,
    CAUSE_QUEUE_TIMEOUT,
    CAUSE_RESET,
    CAUSE_RETRIEVAL,
    PATHS,
    RES_STRIDE,
    RETRIEVER_ATTEMPTS,
)
from ingest.simulator.otlp_json import L, kv_str, ns
from ingest.simulator.traces import hex_ids
from ingest.simulator.world import (
    OP_RAG,
    OPERATIONS,
    SERVICES,
    SVC,
)

SEVERITY = {"DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17}  # OTLP SeverityNumber


class LogSink:
    """Collects log rows (``res, time, sev, body, attrs, trace, span``) and renders OTLP log records."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []

    def add(
        self,
        res: np.ndarray,
        time_ns: np.ndarray,
        severity: str,
        body: pl.Expr,
        cols: dict[str, object],
        attrs: list[pl.Expr] | None = None,
        trace: np.ndarray | None = None,
        span: np.ndarray | None = None,
    ) -> None:
        n = len(res)
        if n == 0:
            return
        df = pl.DataFrame(
            {
                "res": res,
                "time": time_ns,
                **cols,
                "trace": trace if trace is not None else np.full(n, ""),
                "span_id": span if span is not None else np.full(n, ""),
            }
        )
        attr = pl.concat_str(attrs, separator=",") if attrs else L("")
        ids = (
            pl.when(pl.col("trace") == "")
            .then(L(""))
            .otherwise(
                pl.concat_str(
                    [L(',"traceId":"'), pl.col("trace"), L('","spanId":"'), pl.col("span_id"), L('"')]
                )
            )
        )
        json = pl.concat_str(
            [
                L('{"timeUnixNano":"'),
                ns(pl.col("time")),
                L('","observedTimeUnixNano":"'),
                ns(pl.col("time")),
                L(
                    f'","severityNumber":{SEVERITY[severity]},"severityText":"{severity}","body":{{"stringValue":"'
                ),
                body,
                L('"},"attributes":['),
                attr,
                L("]"),
                ids,
                L("}"),
            ]
        )
        self.frames.append(df.select(pl.col("res"), pl.col("time"), json.alias("json")))

    def frame(self) -> pl.DataFrame:
        if not self.frames:
            return pl.DataFrame(schema={"res": pl.Int64, "time": pl.Int64, "json": pl.Utf8})
        return pl.concat(self.frames).sort(["res", "time"], maintain_order=True)


def _cap_per_group(keys: np.ndarray, rng: np.random.Generator, cap: int) -> np.ndarray:
    """Indices keeping at most ``cap`` random rows per key (log rate limiting)."""
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((rng.random(keys.size), keys))
    k = keys[order]
    first = np.r_[0, np.nonzero(k[1:] != k[:-1])[0] + 1]
    rank = np.arange(k.size) - np.repeat(first, np.diff(np.r_[first, k.size]))
    return np.sort(order[rank < cap])


def s(expr: pl.Expr | str) -> pl.Expr:
    return (pl.col(expr) if isinstance(expr, str) else expr).cast(pl.Utf8)


def build_logs(chunk: Chunk, engine: Engine, links: dict, rng: np.random.Generator) -> pl.DataFrame:
    w = engine.w
    req = chunk.requests
    c0, nm = chunk.c0, chunk.c1 - chunk.c0
    sink = LogSink()
    minute_ns = engine.start_ns + (c0 + np.arange(nm)).astype(np.int64) * 60_000_000_000
    sver = chunk.sver

    def res_of(inst: np.ndarray, m: np.ndarray) -> np.ndarray:
        return inst.astype(np.int64) * RES_STRIDE + sver[inst, m]

    def at(m: np.ndarray, jitter: bool = True) -> np.ndarray:
        off = (rng.random(m.size) * 59e9).astype(np.int64) if jitter else 0
        return minute_ns[m] + off

    # errors of failed requests, on the failing service (at most 10 per instance and minute)
    fail_at, cause = req.extra["fail_at"], req.extra["cause"]
    failed = np.nonzero(req.extra["error"])[0]
    f_svc = np.full(failed.size, SVC["gateway"])
    for op, path in PATHS.items():
        for h, (svc, _role) in enumerate(path):
            hit = (req.op[failed] == op) & (fail_at[failed] == h)
            f_svc[hit] = SVC[svc]
    f_inst = np.full(failed.size, -1)
    for s_i, spec in enumerate(SERVICES):
        hit = f_svc == s_i
        f_inst[hit] = req.inst[spec.name][failed[hit]]
    f_cause = np.where(fail_at[failed] < 99, cause[failed], req.extra["gw_cause"][failed])
    keep = _cap_per_group(f_inst * nm + req.minute[failed], rng, 10)
    rows, inst_r, cause_r = failed[keep], f_inst[keep], f_cause[keep]
    # link to the sampled trace, if any (links["req"] is sorted)
    pos = np.clip(np.searchsorted(links["req"], rows), 0, max(links["req"].size - 1, 0))
    linked = (
        (links["req"].size > 0) & (links["req"][pos] == rows)
        if links["req"].size
        else np.zeros(rows.size, dtype=bool)
    )
    trace = np.where(linked, links["trace"][pos], "") if links["req"].size else np.full(rows.size, "")
    span = np.where(linked, links["span"][pos], "") if links["req"].size else np.full(rows.size, "")
    rid = hex_ids(rng, rows.size, 6)
    tenant = np.array(w.tenants)[req.tenant[rows]]
    model = np.array([o.model for o in OPERATIONS])[req.op[rows]]
    version = np.array(engine.versions)[np.maximum(req.version[rows], 0)]
    for c, body in (
        (CAUSE_INTERNAL, [L("Request "), s("rid"), L(" failed with status 500: internal server error")]),
        (
            CAUSE_RESET,
            [L("Request "), s("rid"), L(" aborted: connection reset by peer (worker shutting down)")],
        ),
        (
            CAUSE_QUEUE_FULL,
            [L("Rejected request "), s("rid"), L(": scheduler queue is full for "), s("model")],
        ),
        (
            CAUSE_QUEUE_TIMEOUT,
            [L("Aborted request "), s("rid"), L(" after 55 s in the waiting queue of "), s("model")],
        ),
        (
            CAUSE_BAD_MODEL,
            [
                L("Generation failed for request "),
                s("rid"),
                L(" on "),
                s("model"),
                L(" "),
                s("ver"),
                L(": CUDA error: device-side assert triggered"),
            ],
        ),
        (
            CAUSE_RETRIEVAL,
            [
                L("Retrieval for request "),
                s("rid"),
                L(f" timed out after {RETRIEVER_ATTEMPTS} attempts of 2000 ms; returning 504"),
            ],
        ),
        (
            CAUSE_POOL,
            [
                L("Request "),
                s("rid"),
                L(" shed: no vector-db connection available after 10 s (pool exhausted)"),
            ],
        ),
    ):
        sel = np.nonzero(cause_r == c)[0]
        sink.add(
            res_of(inst_r[sel], req.minute[rows[sel]]),
            minute_ns[req.minute[rows[sel]]] + (req.second[rows[sel]] * 1e9).astype(np.int64),
            "ERROR",
            pl.concat_str(body),
            {"rid": rid[sel], "model": model[sel], "ver": version[sel], "tenant": tenant[sel]},
            [kv_str("rootwise.tenant.id", pl.col("tenant"))],
            trace[sel],
            span[sel],
        )

    # rag-api: a retrieval attempt timed out and a retry follows
    for a in range(1, RETRIEVER_ATTEMPTS):
        rt = np.nonzero(req.extra["attempts"] > a)[0]
        inst = req.inst["rag-api"][rt]
        keep = _cap_per_group(inst * nm + req.minute[rt], rng, 5)
        rt, inst = rt[keep], inst[keep]
        sink.add(
            res_of(inst, req.minute[rt]),
            minute_ns[req.minute[rt]] + (req.second[rt] * 1e9).astype(np.int64),
            "WARN",
            pl.concat_str(
                [
                    L(
                        f"Timeout calling retriever (collection kb-main) after 2000 ms, attempt "
                        f"{a}/{RETRIEVER_ATTEMPTS}, retrying; tenant "
                    ),
                    s("tenant"),
                ]
            ),
            {"tenant": np.array(w.tenants)[req.tenant[rt]]},
            [kv_str("rootwise.tenant.id", pl.col("tenant"))],
        )

    # GPU nodes: vLLM periodic stats, preemption warnings, CUDA OOMs, throttling
    nodes = np.nonzero(w.inst_model >= 0)[0]
    ns_ = chunk.node_state
    ni, nmi = np.repeat(nodes, nm), np.tile(np.arange(nm), nodes.size)
    llm_idx = np.nonzero(req.inst["llm-serving"] >= 0)[0]
    k = req.inst["llm-serving"][llm_idx] * nm + req.minute[llm_idx]
    size = w.n_instances * nm
    prompt = np.bincount(k, weights=req.input_tokens[llm_idx], minlength=size).reshape(-1, nm)[nodes].ravel()
    gen = np.bincount(k, weights=req.output_tokens[llm_idx], minlength=size).reshape(-1, nm)[nodes].ravel()
    kv = np.clip(ns_["kv_ratio"][nodes] * 98.0, 0, 100).ravel()
    mean_svc = np.maximum(ns_["demand"][nodes] / np.maximum(ns_["n_req"][nodes], 1), 0.05).ravel()
    pending = np.rint(ns_["backlog"][nodes].ravel() / mean_svc).astype(np.int64)
    running = np.rint(ns_["running"][nodes].ravel()).astype(np.int64)
    every2 = np.nonzero((chunk.c0 + nmi) % 2 == 0)[0]  # vLLM logs its stats periodically
    sink.add(
        res_of(ni[every2], nmi[every2]),
        at(nmi[every2]),
        "INFO",
        pl.concat_str(
            [
                L("Avg prompt throughput: "),
                s("p"),
                L(" tokens/s, Avg generation throughput: "),
                s("g"),
                L(" tokens/s, Running: "),
                s("r"),
                L(" reqs, Swapped: 0 reqs, Pending: "),
                s("w"),
                L(" reqs, GPU KV cache usage: "),
                s("kv"),
                L("%, CPU KV cache usage: 0.0%."),
            ]
        ),
        {
            "p": np.round(prompt / 60.0, 1)[every2],
            "g": np.round(gen / 60.0, 1)[every2],
            "r": running[every2],
            "w": pending[every2],
            "kv": np.round(kv, 1)[every2],
        },
    )
    pre = ns_["preempt"][nodes].ravel()
    hit = np.nonzero(pre > 0)[0]
    total = np.cumsum(pre)[hit] + 1000 * (ni[hit] % 7)
    sink.add(
        res_of(ni[hit], nmi[hit]),
        at(nmi[hit]),
        "WARN",
        pl.concat_str(
            [
                L("Sequence group "),
                s("sg"),
                L(
                    " is preempted by PreemptionMode.RECOMPUTE mode because there is not "
                    "enough KV cache space. This can affect the end-to-end performance. "
                    "Increase gpu_memory_utilization or tensor_parallel_size to provide more "
                    "KV cache memory. total_num_cumulative_preemption="
                ),
                s("n"),
            ]
        ),
        {"sg": rng.integers(1000, 99999, hit.size), "n": total},
    )
    oom_gpu = np.nonzero((ns_["kv_ratio"][nodes].ravel() > 1.5) & (rng.random(ni.size) < 0.3))[0]
    sink.add(
        res_of(ni[oom_gpu], nmi[oom_gpu]),
        at(nmi[oom_gpu]),
        "ERROR",
        pl.concat_str(
            [
                L("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "),
                s("gib"),
                L(" GiB. GPU 0 has a total capacity of 79.19 GiB of which "),
                s("free"),
                L(" MiB is free."),
            ]
        ),
        {
            "gib": np.round(rng.uniform(0.5, 6.0, oom_gpu.size), 2),
            "free": rng.integers(20, 900, oom_gpu.size),
        },
    )
    speed = ns_["speed"][nodes].ravel()
    thr = np.nonzero((speed < 0.9) | (rng.random(ni.size) < 0.0004))[0]
    sink.add(
        res_of(ni[thr], nmi[thr]),
        at(nmi[thr]),
        "WARN",
        pl.concat_str(
            [
                L("GPU 0 ("),
                s("uuid"),
                L("): clocks throttled, reason "),
                s("why"),
                L(", sm_clock "),
                s("clk"),
                L(" MHz"),
            ]
        ),
        {
            "uuid": np.array(engine.gpu_uuid)[ni[thr]],
            "why": np.where(speed[thr] < 0.9, "HW_SLOWDOWN", "SW_POWER_CAP"),
            "clk": (np.rint(1980 * speed[thr] ** 0.9 / 15) * 15).astype(np.int64),
        },
    )

    # restarts: OOM kills, then the new process announcing itself
    limit = np.array([SERVICES[x].memory_limit_mb for x in w.inst_service])
    ri, rm = np.nonzero(chunk.restarts)
    oi, om = np.nonzero(chunk.oom)
    sink.add(
        res_of(oi, np.maximum(om - 1, 0)),
        minute_ns[om] - 2_000_000_000,
        "ERROR",
        pl.concat_str(
            [
                L("Container "),
                s("svc"),
                L(" in pod "),
                s("pod"),
                L(" was OOMKilled (memory limit "),
                s("lim"),
                L("Mi); restarting, restart count "),
                s("cnt"),
            ]
        ),
        {
            "svc": np.array([SERVICES[x].name for x in w.inst_service[oi]], dtype=str),
            "pod": np.array(w.inst_name)[oi],
            "lim": limit[oi].astype(np.int64),
            "cnt": chunk.restart_count[oi, om],
        },
        [kv_str("k8s.pod.name", pl.col("pod"))],
    )
    sink.add(
        res_of(ri, rm),
        minute_ns[rm] + 4_000_000_000,
        "INFO",
        pl.concat_str(
            [L("Starting "), s("svc"), L(" "), s("ver"), L(" on "), s("host"), L(" (pid "), s("pid"), L(")")]
        ),
        {
            "svc": np.array([SERVICES[x].name for x in w.inst_service[ri]], dtype=str),
            "ver": np.array(engine.service_versions)[sver[ri, rm]],
            "host": np.array(w.inst_host)[ri],
            "pid": rng.integers(7, 400, ri.size),
        },
    )
    mem = chunk.memory_mb
    hi_i, hi_m = np.nonzero(mem > 0.85 * limit[:, None])
    sink.add(
        res_of(hi_i, hi_m),
        at(hi_m),
        "WARN",
        pl.concat_str([L("Memory usage "), s("mb"), L(" MiB is "), s("pct"), L("% of the container limit")]),
        {
            "mb": np.rint(mem[hi_i, hi_m]).astype(np.int64),
            "pct": np.rint(100 * mem[hi_i, hi_m] / limit[hi_i]).astype(np.int64),
        },
    )

    # gateway: tenants far above their usual rate hit the soft rate limit
    per_tr = np.bincount(
        req.tenant * 3 * nm + req.region * nm + req.minute, minlength=len(w.tenants) * 3 * nm
    ).reshape(len(w.tenants), 3, nm)
    base = np.zeros((len(w.tenants), 3))
    np.add.at(base, (w.route_tenant, w.route_region), w.route_rate)
    soft = np.maximum(4.0 * base * 1.4, 30.0)
    ti, gi, mi = np.nonzero(per_tr > soft[:, :, None])
    gw_inst = (
        engine.svc_first[SVC["gateway"], gi]
        + rng.integers(0, 10**6, ti.size) % engine.svc_count[SVC["gateway"], gi]
    )
    sink.add(
        res_of(gw_inst, mi),
        at(mi),
        "WARN",
        pl.concat_str(
            [
                L("Tenant "),
                s("t"),
                L(" exceeds its soft rate limit: "),
                s("rpm"),
                L(" rpm (limit "),
                s("lim"),
                L(" rpm)"),
            ]
        ),
        {
            "t": np.array(w.tenants)[ti],
            "rpm": per_tr[ti, gi, mi],
            "lim": np.rint(soft[ti, gi]).astype(np.int64),
        },
        [kv_str("rootwise.tenant.id", pl.col("t"))],
    )

    # feature-store: feature quality (null rates jump while the pipeline change is live)
    fs = np.nonzero(w.inst_service == SVC["feature-store"])[0]
    drift = np.zeros(nm)
    for _inc, kk in engine.active("prediction_drift", chunk.c0, chunk.c1):
        drift = np.maximum(drift, kk)
    fi, fm = np.nonzero(rng.random((fs.size, nm)) < 0.0008 + 0.7 * drift[None, :])
    fi = fs[fi]
    feat = np.array(["txn_velocity_1h", "avg_basket_7d", "account_age_days", "device_risk"])
    sink.add(
        res_of(fi, fm),
        at(fm),
        "WARN",
        pl.concat_str(
            [
                L("Feature user_risk_features."),
                s("f"),
                L(" null rate "),
                s("p"),
                L("% exceeds threshold 5.0%"),
            ]
        ),
        {
            "f": feat[rng.integers(0, feat.size, fi.size)],
            "p": np.round(
                np.where(drift[fm] > 0, rng.uniform(18, 45, fi.size), rng.uniform(5.1, 7.0, fi.size)), 1
            ),
        },
    )

    # rag-api: the prompt template in use and the prompt size it produces
    rag = np.nonzero(req.op == OP_RAG)[0]
    tpl = req.extra["template"][rag]
    key = (req.inst["rag-api"][rag] * nm + req.minute[rag]) * 64 + tpl
    uk, inv = np.unique(key, return_inverse=True)
    cnt = np.bincount(inv)
    tok = np.bincount(inv, weights=req.input_tokens[rag])
    tpl_names = np.array(
        ["rag-v7"] + [inc.labels.get("prompt_template", "rag-v7") for inc in engine.plan.incidents]
    )
    ui, um, ut = (uk // 64) // nm, (uk // 64) % nm, uk % 64
    sink.add(
        res_of(ui, um),
        at(um),
        "INFO",
        pl.concat_str(
            [
                L("Prompt assembled with template "),
                s("tpl"),
                L(": mean "),
                s("tok"),
                L(" input tokens over "),
                s("n"),
                L(" requests"),
            ]
        ),
        {"tpl": tpl_names[ut], "tok": np.rint(tok / cnt).astype(np.int64), "n": cnt},
    )

    # routine chatter
    routine = {
        "gateway": "Reloaded routing table: {a} routes",
        "rag-api": "Response cache stats: {a} entries",
        "retriever": "Segment merge finished on collection kb-main: {a} segments",
        "embedder": "Embedded a batch of {a} inputs",
        "reranker": "Reranked {a} candidates",
        "llm-serving": "Prefix cache hit rate {a} per mille",
        "predictor": "Model m-risk warm: {a} predictions since the last report",
        "feature-store": "Materialization of user_risk_features finished: {a} rows",
    }
    lam = 0.05
    ri2, rm2 = np.nonzero(rng.random((w.n_instances, nm)) < lam)
    chatter_svc = w.inst_service[ri2]
    for s_i, spec in enumerate(SERVICES):
        sel = np.nonzero(chatter_svc == s_i)[0]
        pre_t, post_t = routine[spec.name].split("{a}")
        sink.add(
            res_of(ri2[sel], rm2[sel]),
            at(rm2[sel]),
            "INFO",
            pl.concat_str([L(pre_t), s("a"), L(post_t)]),
            {"a": rng.integers(3, 5000, sel.size)},
        )
    return sink.frame()
