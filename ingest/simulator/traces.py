"""Sampled traces of one chunk, rendered as OTLP/JSON spans.

Traces are a head sample of the simulated requests, weighted by operation (the multi-hop rag flow most), plus a
larger share of failed ones (as a tail-sampling policy keeping errors would). One server span per service hop:
gateway -> rag-api -> embedder, retriever (one span per attempt), reranker, llm-serving; gateway -> llm-serving;
gateway -> embedder; gateway -> predictor -> feature-store, plus the predictor's model.predict span. LLM spans carry
the OpenTelemetry GenAI attributes; failed hops and their callers carry error status.
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
    RES_STRIDE,
    RETRIEVER_ATTEMPTS,
    RETRIEVER_BACKOFF_S,
    RETRIEVER_TIMEOUT_S,
)
from ingest.simulator.otlp_json import L, kv_bool, kv_double, kv_int, kv_str, ns
from ingest.simulator.world import (
    OP_CHAT_LARGE,
    OP_CHAT_SMALL,
    OP_EMBED,
    OP_PREDICT,
    OP_RAG,
    OPERATIONS,
)

CAUSE_MESSAGE = {
    CAUSE_INTERNAL: "internal error",
    CAUSE_QUEUE_FULL: "scheduler queue full",
    CAUSE_QUEUE_TIMEOUT: "request timed out in the waiting queue",
    CAUSE_BAD_MODEL: "CUDA error: device-side assert triggered",
    CAUSE_RETRIEVAL: "retriever timed out after 3 attempts",
    CAUSE_POOL: "vector-db connection pool exhausted",
    CAUSE_RESET: "connection reset by peer",
}
CAUSE_HTTP = {
    0: 200,
    CAUSE_INTERNAL: 500,
    CAUSE_QUEUE_FULL: 503,
    CAUSE_QUEUE_TIMEOUT: 504,
    CAUSE_BAD_MODEL: 500,
    CAUSE_RETRIEVAL: 504,
    CAUSE_RESET: 502,
    CAUSE_POOL: 503,
}


def hex_ids(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    """``n`` random lowercase hex ids of ``nbytes`` bytes (never all zero)."""
    raw = np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes).copy()
    raw[:, -1] |= 1
    return np.frombuffer(raw.tobytes().hex().encode(), dtype=f"S{2 * nbytes}").astype(str)


def _lookup(codes: np.ndarray, table: dict[int, str] | dict[int, int]) -> np.ndarray:
    keys = np.array(sorted(table))
    vals = np.array([table[k] for k in keys])
    return vals[np.searchsorted(keys, codes)]


class SpanSink:
    """Collects span rows by type and renders them."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []

    def add(self, cols: dict[str, object], attrs: list[pl.Expr]) -> None:
        df = pl.DataFrame(cols)
        if df.height == 0:
            return
        parent = (
            pl.when(pl.col("parent") == "")
            .then(L(""))
            .otherwise(pl.concat_str([L('"parentSpanId":"'), pl.col("parent"), L('",')]))
        )
        status = (
            pl.when(pl.col("err"))
            .then(pl.concat_str([L('{"code":2,"message":"'), pl.col("msg"), L('"}')]))
            .otherwise(L("{}"))
        )
        json = pl.concat_str(
            [
                L('{"traceId":"'),
                pl.col("trace"),
                L('","spanId":"'),
                pl.col("span"),
                L('",'),
                parent,
                L('"name":"'),
                pl.col("name"),
                L('","kind":'),
                pl.col("kind").cast(pl.Utf8),
                L(',"startTimeUnixNano":"'),
                ns(pl.col("start")),
                L('","endTimeUnixNano":"'),
                ns(pl.col("end")),
                L('","attributes":['),
                pl.concat_str(attrs, separator=","),
                L('],"status":'),
                status,
                L("}"),
            ]
        )
        self.frames.append(df.select(pl.col("res"), pl.col("start"), json.alias("json")))

    def frame(self) -> pl.DataFrame:
        if not self.frames:
            return pl.DataFrame(schema={"res": pl.Int64, "start": pl.Int64, "json": pl.Utf8})
        return pl.concat(self.frames).sort(["res", "start"], maintain_order=True)


def build_spans(chunk: Chunk, engine: Engine, rng: np.random.Generator) -> tuple[pl.DataFrame, dict]:
    """Spans of the sampled requests; also returns the trace/span ids of each sampled request's failing hop."""
    w = engine.w
    req = chunk.requests
    c0 = chunk.c0
    err = req.extra["error"]
    p = engine.sample_p[req.op]
    sampled = (rng.random(req.n) < p) | (err & (rng.random(req.n) < np.minimum(1.0, 10 * p)))
    S = np.nonzero(sampled)[0]
    n = S.size
    trace = hex_ids(rng, n, 16)
    ids = hex_ids(rng, n * 10, 8).reshape(n, 10)
    minute = req.minute[S]
    t0 = (
        engine.start_ns
        + (c0 + minute).astype(np.int64) * 60_000_000_000
        + (req.second[S] * 1e9).astype(np.int64)
    )
    op = req.op[S]
    fail_at = req.extra["fail_at"][S]
    cause = req.extra["cause"][S]
    gw_cause = np.where(fail_at < 99, cause, np.where(req.extra["gw_fail"][S], req.extra["gw_cause"][S], 0))
    tenant = np.array(w.tenants)[req.tenant[S]]
    version = np.array(engine.versions)[np.maximum(req.version[S], 0)]
    model = np.array([o.model for o in OPERATIONS])[op]
    dur = {k: v[S] for k, v in req.dur.items()}
    sver = chunk.sver

    def res(service: str, rows: np.ndarray) -> np.ndarray:
        inst = req.inst[service][S[rows]]
        return inst.astype(np.int64) * RES_STRIDE + sver[inst, minute[rows]]

    def t(x: np.ndarray) -> np.ndarray:
        return (x * 1e9).astype(np.int64)

    sink = SpanSink()
    msg = _lookup(gw_cause, {0: "", **CAUSE_MESSAGE})
    all_rows = np.arange(n)
    gw_pre = t(dur["gateway"] * 0.5)
    route = np.array([o.route for o in OPERATIONS])[op]
    sink.add(
        {
            "res": res("gateway", all_rows),
            "trace": trace,
            "span": ids[:, 0],
            "parent": np.full(n, ""),
            "name": np.char.add("POST ", route),
            "kind": np.full(n, 2),
            "start": t0,
            "end": t0 + t(dur["gateway_total"]),
            "err": err[S],
            "msg": msg,
            "route": route,
            "tenant": tenant,
            "status": _lookup(gw_cause, CAUSE_HTTP),
        },
        [
            kv_str("http.request.method", L("POST")),
            kv_str("http.route", pl.col("route")),
            kv_int("http.response.status_code", pl.col("status")),
            kv_str("rootwise.tenant.id", pl.col("tenant")),
        ],
    )
    child0 = t0 + gw_pre

    # rag: rag-api and its children, in call order
    rag = np.nonzero(op == OP_RAG)[0]
    rag_pre = t(dur["rag-api"][rag] * 0.5)
    tpl_names = ["rag-v7"] + [inc.labels.get("prompt_template", "rag-v7") for inc in engine.plan.incidents]
    template = np.array(tpl_names)[req.extra["template"][S[rag]]]
    rag_err = fail_at[rag] < 99
    sink.add(
        {
            "res": res("rag-api", rag),
            "trace": trace[rag],
            "span": ids[rag, 1],
            "parent": ids[rag, 0],
            "name": np.full(rag.size, "rag.query"),
            "kind": np.full(rag.size, 2),
            "start": child0[rag],
            "end": child0[rag] + t(dur["rag_total"][rag]),
            "err": rag_err,
            "msg": msg[rag],
            "tenant": tenant[rag],
            "tpl": template,
            "attempts": req.extra["attempts"][S[rag]],
            "ctx": ~req.extra["no_context"][S[rag]],
        },
        [
            kv_str("rootwise.tenant.id", pl.col("tenant")),
            kv_str("rag.prompt_template", pl.col("tpl")),
            kv_int("rag.retrieval.attempts", pl.col("attempts")),
            kv_bool("rag.context_used", pl.col("ctx")),
        ],
    )
    cur = child0[rag] + rag_pre
    attempts = req.extra["attempts"][S[rag]]
    # (name, hop reached, span slot); the pool wait is a gap in rag-api before the first attempt
    steps = [("embedder", 1, 2), ("pool_wait", 2, -1)]
    steps += [
        ("retriever" if a == 1 else f"retrieve_{a}", 3, 2 + a) for a in range(1, RETRIEVER_ATTEMPTS + 1)
    ]
    steps += [("reranker", 5, 3 + RETRIEVER_ATTEMPTS), ("llm-serving", 6, 4 + RETRIEVER_ATTEMPTS)]
    for name, hop, slot in steps:
        reached = fail_at[rag] >= hop
        attempt = (
            1 if name == "retriever" else int(name.rsplit("_", 1)[1]) if name.startswith("retrieve_") else 0
        )
        if attempt > 1:
            reached &= attempts >= attempt
        rows = rag[reached]
        start = cur[reached]
        if name == "pool_wait":
            step = dur["pool_wait"][rows]
        elif attempt:
            if attempt > 1:
                start = start + t(np.full(rows.size, RETRIEVER_BACKOFF_S[attempt - 2]))
            d = dur[name][rows]
            sink.add(
                {
                    "res": res("retriever", rows),
                    "trace": trace[rows],
                    "span": ids[rows, slot],
                    "parent": ids[rows, 1],
                    "name": np.full(rows.size, "search kb-main"),
                    "kind": np.full(rows.size, 2),
                    "start": start,
                    "end": start + t(d),
                    "err": np.zeros(rows.size, dtype=bool),
                    "msg": np.full(rows.size, ""),
                    "tenant": tenant[rows],
                    "attempt": np.full(rows.size, attempt),
                },
                [
                    kv_str("db.system.name", L("qdrant")),
                    kv_str("db.operation.name", L("search")),
                    kv_str("db.collection.name", L("kb-main")),
                    kv_str("rootwise.tenant.id", pl.col("tenant")),
                    kv_int("rag.retrieval.attempt", pl.col("attempt")),
                ],
            )
            step = np.minimum(d, RETRIEVER_TIMEOUT_S) + (
                RETRIEVER_BACKOFF_S[attempt - 2] if attempt > 1 else 0.0
            )
        elif name == "llm-serving":
            _llm_spans(
                sink,
                rows,
                start,
                ids[rows, 1],
                ids[rows, slot],
                trace,
                res("llm-serving", rows),
                fail_at,
                hop,
                cause,
                msg,
                tenant,
                model,
                version,
                req,
                S,
                dur,
            )
            step = dur["llm"][rows]
        else:
            m = "m-embed" if name == "embedder" else "m-rerank"
            d = dur[name][rows]
            tokens = req.extra["embed_tokens"][S[rows]] if name == "embedder" else np.full(rows.size, 20)
            sink.add(
                {
                    "res": res(name, rows),
                    "trace": trace[rows],
                    "span": ids[rows, slot],
                    "parent": ids[rows, 1],
                    "name": np.full(rows.size, f"{'embeddings' if name == 'embedder' else 'rerank'} {m}"),
                    "kind": np.full(rows.size, 2),
                    "start": start,
                    "end": start + t(d),
                    "err": fail_at[rows] == hop,
                    "msg": msg[rows],
                    "tenant": tenant[rows],
                    "tokens": tokens,
                },
                [
                    kv_str("gen_ai.operation.name", L("embeddings" if name == "embedder" else "rerank")),
                    kv_str("gen_ai.request.model", L(m)),
                    kv_int("gen_ai.usage.input_tokens", pl.col("tokens")),
                    kv_str("rootwise.tenant.id", pl.col("tenant")),
                ],
            )
            step = d
        cur[reached] += t(step)

    # chat: gateway -> llm-serving
    chat = np.nonzero(np.isin(op, [OP_CHAT_SMALL, OP_CHAT_LARGE]))[0]
    _llm_spans(
        sink,
        chat,
        child0[chat],
        ids[chat, 0],
        ids[chat, 1],
        trace,
        res("llm-serving", chat),
        fail_at,
        0,
        cause,
        msg,
        tenant,
        model,
        version,
        req,
        S,
        dur,
    )
    # embeddings: gateway -> embedder
    emb = np.nonzero(op == OP_EMBED)[0]
    sink.add(
        {
            "res": res("embedder", emb),
            "trace": trace[emb],
            "span": ids[emb, 1],
            "parent": ids[emb, 0],
            "name": np.full(emb.size, "embeddings m-embed"),
            "kind": np.full(emb.size, 2),
            "start": child0[emb],
            "end": child0[emb] + t(dur["embedder"][emb]),
            "err": fail_at[emb] == 0,
            "msg": msg[emb],
            "tenant": tenant[emb],
            "tokens": req.input_tokens[S[emb]],
            "ver": version[emb],
        },
        [
            kv_str("gen_ai.operation.name", L("embeddings")),
            kv_str("gen_ai.request.model", L("m-embed")),
            kv_str("rootwise.model.version", pl.col("ver")),
            kv_int("gen_ai.usage.input_tokens", pl.col("tokens")),
            kv_str("rootwise.tenant.id", pl.col("tenant")),
        ],
    )
    # predict: gateway -> predictor -> feature-store, then model.predict inside the predictor
    pr = np.nonzero(op == OP_PREDICT)[0]
    score = np.round(req.extra["score"][S[pr]], 4)
    sink.add(
        {
            "res": res("predictor", pr),
            "trace": trace[pr],
            "span": ids[pr, 1],
            "parent": ids[pr, 0],
            "name": np.full(pr.size, "predict m-risk"),
            "kind": np.full(pr.size, 2),
            "start": child0[pr],
            "end": child0[pr] + t(dur["predict_total"][pr]),
            "err": fail_at[pr] < 99,
            "msg": msg[pr],
            "tenant": tenant[pr],
            "ver": version[pr],
            "score": np.maximum(score, 0.0),
        },
        [
            kv_str("ml.model.name", L("m-risk")),
            kv_str("ml.model.version", pl.col("ver")),
            kv_double("prediction.score", pl.col("score")),
            kv_str("rootwise.tenant.id", pl.col("tenant")),
        ],
    )
    fs_start = child0[pr] + t(dur["predictor"][pr] * 0.5)
    rows = pr[fail_at[pr] >= 1]
    fs0 = fs_start[fail_at[pr] >= 1]
    sink.add(
        {
            "res": res("feature-store", rows),
            "trace": trace[rows],
            "span": ids[rows, 2],
            "parent": ids[rows, 1],
            "name": np.full(rows.size, "GetOnlineFeatures user_risk_features"),
            "kind": np.full(rows.size, 2),
            "start": fs0,
            "end": fs0 + t(dur["feature-store"][rows]),
            "err": fail_at[rows] == 1,
            "msg": msg[rows],
            "tenant": tenant[rows],
        },
        [
            kv_str("feature_store.feature_view", L("user_risk_features")),
            kv_str("rootwise.tenant.id", pl.col("tenant")),
        ],
    )
    ok = fail_at[pr] == 99
    rows = pr[ok]
    m0 = fs_start[ok] + t(dur["feature-store"][rows])
    sink.add(
        {
            "res": res("predictor", rows),
            "trace": trace[rows],
            "span": ids[rows, 3],
            "parent": ids[rows, 1],
            "name": np.full(rows.size, "model.predict m-risk"),
            "kind": np.full(rows.size, 1),
            "start": m0,
            "end": m0 + t(dur["model"][rows]),
            "err": np.zeros(rows.size, dtype=bool),
            "msg": np.full(rows.size, ""),
            "ver": version[rows],
        },
        [kv_str("ml.model.name", L("m-risk")), kv_str("ml.model.version", pl.col("ver"))],
    )

    # the span that failed, for error logs: (request index -> trace id, span id)
    # rag hops: 0 rag-api, 1 embedder, 2 pool (rag-api), 3 retriever, 4 timeout (rag-api), 5 reranker, 6 llm
    rag_slot = np.select(
        [fail_at == 1, fail_at == 3, fail_at == 5, fail_at == 6],
        [2, 3, 3 + RETRIEVER_ATTEMPTS, 4 + RETRIEVER_ATTEMPTS],
        1,
    )
    fail_slot = np.select([op == OP_RAG, op == OP_PREDICT], [rag_slot, np.where(fail_at == 1, 2, 1)], 1)
    fail_slot = np.where(fail_at < 99, fail_slot, 0)
    links = {"req": S, "trace": trace, "span": ids[np.arange(n), fail_slot], "gw_span": ids[:, 0]}
    return sink.frame(), links


def _llm_spans(
    sink: SpanSink,
    rows: np.ndarray,
    start: np.ndarray,
    parent: np.ndarray,
    span: np.ndarray,
    trace: np.ndarray,
    res: np.ndarray,
    fail_at: np.ndarray,
    hop: int,
    cause: np.ndarray,
    msg: np.ndarray,
    tenant: np.ndarray,
    model: np.ndarray,
    version: np.ndarray,
    req,
    S: np.ndarray,
    dur: dict[str, np.ndarray],
) -> None:
    failed = fail_at[rows] == hop
    out = np.where(failed, 0, req.output_tokens[S[rows]])
    sink.add(
        {
            "res": res,
            "trace": trace[rows],
            "span": span,
            "parent": parent,
            "name": np.char.add("chat ", model[rows]),
            "kind": np.full(rows.size, 2),
            "start": start,
            "end": start + (dur["llm"][rows] * 1e9).astype(np.int64),
            "err": failed,
            "msg": msg[rows],
            "tenant": tenant[rows],
            "model": model[rows],
            "ver": version[rows],
            "inp": req.input_tokens[S[rows]],
            "out": out,
            "ttft": np.round(dur["ttft"][rows], 4),
        },
        [
            kv_str("gen_ai.operation.name", L("chat")),
            kv_str("gen_ai.provider.name", L("vllm")),
            kv_str("gen_ai.request.model", pl.col("model")),
            kv_str("rootwise.model.version", pl.col("ver")),
            kv_int("gen_ai.usage.input_tokens", pl.col("inp")),
            kv_int("gen_ai.usage.output_tokens", pl.col("out")),
            kv_double("gen_ai.server.time_to_first_token", pl.col("ttft")),
            kv_str("rootwise.tenant.id", pl.col("tenant")),
        ],
    )
