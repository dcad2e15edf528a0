"""Meters: what the platform's exporters report about one chunk of requests.

Per-tenant usage rows (Parquet), per-instance OTLP series (requests, errors, duration histograms, memory;
GenAI TTFT / time-per-output-token on GPU nodes; prediction scores) and DCGM / vLLM samples of the GPU nodes.
Cumulative series carry over between chunks and restart from zero at process restarts, with a new start time.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ingest.simulator.flows import (
    CAUSE_NONE,
    HTTP_BOUNDS,
    LONG_BOUNDS,
    NUMBER_METRICS,
    PATHS,
    PROM_FAMILIES,
    RETRIEVER_ATTEMPTS,
    SCORE_BOUNDS,
    TPOT_BOUNDS,
    TTFT_BOUNDS,
    USAGE_METRICS,
    Requests,
    cumulate,
)
from ingest.simulator.world import (
    EMBED_PRICE_PER_M,
    LLM_INDEX,
    LLMS,
    OP_CHAT_LARGE,
    OP_CHAT_SMALL,
    OP_EMBED,
    OP_PREDICT,
    OP_RAG,
    OPERATIONS,
    PREDICT_PRICE,
    SERVICES,
    SVC,
    World,
)


class Meters:
    """Cumulative exporter state of every instance, and the per-chunk aggregations."""

    def __init__(
        self, world: World, start_ns: int, leaks: list[tuple[int, int, int, float]], rng: np.random.Generator
    ) -> None:
        self.w, self.start_ns, self.leak_rows = world, start_ns, leaks
        n_inst = world.n_instances
        # every process started just before the period, so its cumulative counters begin at zero consistently
        self.proc_start_ns = (start_ns - rng.uniform(1, 59, n_inst) * 1e9).astype(np.int64)
        self.carry: dict[str, np.ndarray] = {}
        self.carry_series: dict[tuple, np.ndarray] = {}
        self.mem_phase = rng.uniform(0, 2 * np.pi, n_inst)
        self.fb_used = (
            np.where(world.inst_model >= 0, 0.9, 0.0)
            * np.array([LLMS[m].gpu_mem_mib if m >= 0 else 0 for m in world.inst_model])
            * rng.uniform(0.985, 0.995, n_inst)
        )

    def usage(self, req: Requests, vmat: np.ndarray, c0: int, c1: int) -> pl.DataFrame:
        """Per tenant x operation x model x version x region and minute (dense: every route, every minute)."""
        w = self.w
        nm = c1 - c0
        key = req.route * nm + req.minute
        size = w.route_rate.size * nm
        llm_model = np.array([LLM_INDEX.get(op.model, 0) for op in OPERATIONS])[req.op]
        price_in = np.array([m.price_in for m in LLMS])[llm_model]
        price_out = np.array([m.price_out for m in LLMS])[llm_model]
        is_llm = np.isin(req.op, [OP_CHAT_SMALL, OP_CHAT_LARGE, OP_RAG])
        billed = ~req.extra["error"]
        cost = np.where(
            is_llm,
            (req.input_tokens * price_in + req.output_tokens * price_out) / 1e6,
            np.where(req.op == OP_EMBED, req.input_tokens * EMBED_PRICE_PER_M / 1e6, PREDICT_PRICE),
        )
        cost = cost * billed
        tok_out = req.output_tokens * billed
        sums = {
            "requests": np.bincount(key, minlength=size).astype(np.float64),
            "errors": np.bincount(key, weights=req.extra["error"], minlength=size),
            "input_tokens": np.bincount(key, weights=req.input_tokens, minlength=size),
            "output_tokens": np.bincount(key, weights=tok_out, minlength=size),
            "cost_usd": np.round(np.bincount(key, weights=cost, minlength=size), 6),
            "latency_ms_sum": np.round(
                np.bincount(key, weights=req.dur["gateway_total"], minlength=size) * 1000, 1
            ),
        }
        cells = np.arange(size)  # every route every minute: zeros are data (a quiet minute, not a gap)
        r, m = cells // nm, cells % nm
        op = w.route_op[r]
        ts = (self.start_ns // 1000 + (c0 + m) * 60_000_000).astype(np.int64)
        frames = []
        for metric, values in sums.items():
            keep = np.ones(cells.size, dtype=bool)
            if metric == "input_tokens":
                keep = op != OP_PREDICT
            elif metric == "output_tokens":
                keep = np.isin(op, [OP_CHAT_SMALL, OP_CHAT_LARGE, OP_RAG])
            frames.append(
                pl.DataFrame(
                    {
                        "ts": ts[keep],
                        "metric": np.full(keep.sum(), USAGE_METRICS.index(metric), dtype=np.int8),
                        "value": values[cells][keep],
                        "route": r[keep].astype(np.int32),
                        "version": vmat[r[keep], m[keep]],
                    }
                )
            )
        return pl.concat(frames).sort(["ts", "metric", "route"])

    def instances(
        self,
        req: Requests,
        rng: np.random.Generator,
        c0: int,
        c1: int,
        restarts: np.ndarray,
        restart_idx: np.ndarray,
        sver: np.ndarray,
        node: dict[str, np.ndarray],
    ) -> tuple[pl.DataFrame, list[tuple[str, np.ndarray, pl.DataFrame, np.ndarray]], np.ndarray]:
        """Per-instance OTLP series: requests, errors, duration histograms and memory; GenAI TTFT and
        time-per-output-token histograms of the GPU nodes; the predictor's score histogram per model version.

        Returns (number points, histograms as (metric, bounds, frame, bucket counts), memory in MiB)."""
        w = self.w
        nm = c1 - c0
        n_inst = w.n_instances
        fail_at, err_gw = req.extra["fail_at"], req.extra["error"]
        # server spans per service: (instance, minute, duration, error)
        rows_i, rows_m, rows_d, rows_e = [], [], [], []
        for spec in SERVICES:
            inst = req.inst[spec.name]
            for op, path in [*PATHS.items(), (None, ())]:
                if spec.name == "gateway":
                    if op is not None:
                        continue
                    sel = np.ones(req.n, dtype=bool)
                    d, e = req.dur["gateway_total"], err_gw
                else:
                    if op is None:
                        continue
                    hops = [
                        h
                        for h, (s, role) in enumerate(path)
                        if s == spec.name and role not in ("timeout", "pool")
                    ]
                    if not hops:
                        continue
                    h = hops[0]
                    sel = (req.op == op) & (fail_at >= h) & (inst >= 0)
                    d = req.dur[
                        {"llm-serving": "llm", "rag-api": "rag_total", "predictor": "predict_total"}.get(
                            spec.name, spec.name
                        )
                    ]
                    # rag-api and predictor answer for their whole sub-tree; the others for themselves
                    e = fail_at < 99 if spec.name in ("rag-api", "predictor") else fail_at == h
                idx = np.nonzero(sel)[0]
                rows_i.append(inst[idx])
                rows_m.append(req.minute[idx])
                rows_d.append(d[idx])
                rows_e.append(e[idx])
                if spec.name == "retriever":  # every retry is a request of its own
                    for a in range(2, RETRIEVER_ATTEMPTS + 1):
                        idx2 = idx[req.extra["attempts"][idx] >= a]
                        rows_i.append(inst[idx2])
                        rows_m.append(req.minute[idx2])
                        rows_d.append(req.dur[f"retrieve_{a}"][idx2])
                        rows_e.append(np.zeros(idx2.size, dtype=bool))
        si, sm = np.concatenate(rows_i), np.concatenate(rows_m)
        sd, se = np.concatenate(rows_d), np.concatenate(rows_e)
        key = si * nm + sm
        n_req = np.bincount(key, minlength=n_inst * nm).reshape(n_inst, nm)
        n_err = np.bincount(key, weights=se, minlength=n_inst * nm).reshape(n_inst, nm).astype(np.int64)
        d_sum = np.bincount(key, weights=sd, minlength=n_inst * nm).reshape(n_inst, nm)
        long_svc = np.isin(w.inst_service, [SVC["gateway"], SVC["rag-api"], SVC["llm-serving"]])
        b_http = np.searchsorted(HTTP_BOUNDS, sd, side="left")
        b_long = np.searchsorted(LONG_BOUNDS, sd, side="left")
        bucket = np.where(long_svc[si], b_long, b_http)
        nb = LONG_BOUNDS.size + 1  # wide enough for both bound sets; HTTP instances use the first columns
        h_dur = np.bincount(key * nb + bucket, minlength=n_inst * nm * nb).reshape(n_inst, nm, nb)

        # process restarts: cumulative counters restart from zero; the start time moves to the restart
        restart_ns = self.start_ns + (c0 + np.arange(nm)) * 60_000_000_000 + 3_000_000_000
        start_ns = np.where(restart_idx >= 0, restart_ns[np.clip(restart_idx, 0, nm - 1)], 0)
        start_ns = np.where(restart_idx >= 0, start_ns, self.proc_start_ns[:, None])
        time_ns = self.start_ns + (c0 + 1 + np.arange(nm)) * 60_000_000_000
        new_start = start_ns[:, -1].copy()

        cum_req, self.carry["req"] = cumulate(
            n_req, restarts, self.carry.get("req", np.zeros(n_inst, np.int64))
        )
        cum_err, self.carry["err"] = cumulate(
            n_err, restarts, self.carry.get("err", np.zeros(n_inst, np.int64))
        )
        cum_dsum, self.carry["dsum"] = cumulate(d_sum, restarts, self.carry.get("dsum", np.zeros(n_inst)))
        cum_h, self.carry["h_dur"] = cumulate(
            h_dur, restarts, self.carry.get("h_dur", np.zeros((n_inst, nb), np.int64))
        )

        # memory: steady with a slow wave; leaking instances ramp to the limit until OOM-killed
        limit = np.array([SERVICES[s].memory_limit_mb for s in w.inst_service])
        age = (np.arange(nm)[None, :] - restart_idx).astype(np.float64)
        mem = w.inst_memory_mb[:, None] * (
            1 + 0.03 * np.sin(2 * np.pi * (c0 + np.arange(nm))[None, :] / 1440.0 + self.mem_phase[:, None])
        )
        mem = mem * (1 + 0.01 * rng.standard_normal((n_inst, nm)))
        for leak_inst, leak_start, leak_end, to_limit in self.leak_rows:
            mm = c0 + np.arange(nm)
            on = (mm >= leak_start) & (mm < leak_end)
            frac = np.clip(age[leak_inst] / to_limit, 0, 1)
            mem[leak_inst] = np.where(
                on, mem[leak_inst] + (limit[leak_inst] * 0.98 - mem[leak_inst]) * frac, mem[leak_inst]
            )

        inst_ix = np.repeat(np.arange(n_inst), nm)
        numbers = []
        for metric, vals, starts in (
            ("requests", cum_req, start_ns),
            ("errors", cum_err, start_ns),
            ("process.memory.usage", np.rint(mem * 1048576), None),
        ):
            numbers.append(
                pl.DataFrame(
                    {
                        "inst": inst_ix.astype(np.int32),
                        "sver": sver.ravel(),
                        "metric": np.full(inst_ix.size, NUMBER_METRICS.index(metric), dtype=np.int8),
                        "time_ns": np.tile(time_ns, n_inst),
                        "start_ns": (
                            starts.ravel() if starts is not None else np.zeros(inst_ix.size, np.int64)
                        ),
                        "value": vals.ravel().astype(np.float64),
                    }
                )
            )
        numbers_df = pl.concat(numbers)

        hists = []
        dur_counts = cum_h.reshape(-1, nb)
        base = pl.DataFrame(
            {
                "inst": inst_ix.astype(np.int32),
                "sver": sver.ravel(),
                "time_ns": np.tile(time_ns, n_inst),
                "start_ns": start_ns.ravel(),
                "count": cum_req.ravel().astype(np.int64),
                "sum": np.round(cum_dsum.ravel(), 4),
                "attrs": np.zeros(inst_ix.size, np.int32),
            }
        )
        for metric, bounds, mask in (
            ("http.server.request.duration", HTTP_BOUNDS, ~long_svc),
            ("http.server.request.duration", LONG_BOUNDS, long_svc & (w.inst_model < 0)),
            ("gen_ai.server.request.duration", LONG_BOUNDS, w.inst_model >= 0),
        ):
            rows = np.repeat(mask, nm)
            hists.append(
                (metric, bounds, base.filter(pl.Series(rows)), dur_counts[rows][:, : bounds.size + 1])
            )

        # GenAI histograms per GPU node
        nodes = np.nonzero(w.inst_model >= 0)[0]
        llm_rows = np.nonzero((req.inst["llm-serving"] >= 0) & (req.extra["llm_cause"] == CAUSE_NONE))[0]
        k_llm = req.inst["llm-serving"][llm_rows] * nm + req.minute[llm_rows]
        node_rows = np.repeat(np.isin(np.arange(n_inst), nodes), nm)
        for metric, values, bounds in (
            ("gen_ai.server.time_to_first_token", req.dur["ttft"], TTFT_BOUNDS),
            ("gen_ai.server.time_per_output_token", req.dur["tpot"], TPOT_BOUNDS),
        ):
            v = values[llm_rows]
            nbk = bounds.size + 1
            counts = np.bincount(
                k_llm * nbk + np.searchsorted(bounds, v, side="left"), minlength=n_inst * nm * nbk
            ).reshape(n_inst, nm, nbk)
            sums = np.bincount(k_llm, weights=v, minlength=n_inst * nm).reshape(n_inst, nm)
            cum_c, self.carry[metric] = cumulate(
                counts, restarts, self.carry.get(metric, np.zeros((n_inst, nbk), np.int64))
            )
            cum_s, self.carry[metric + ".sum"] = cumulate(
                sums, restarts, self.carry.get(metric + ".sum", np.zeros(n_inst))
            )
            frame = base.with_columns(
                count=pl.Series(cum_c.sum(axis=2).ravel()), sum=pl.Series(np.round(cum_s.ravel(), 4))
            )
            hists.append(
                (metric, bounds, frame.filter(pl.Series(node_rows)), cum_c.reshape(-1, nbk)[node_rows])
            )

        # prediction scores per predictor instance and m-risk version
        p_rows = np.nonzero((req.extra["score"] >= 0) & (req.extra["fail_at"] == 99))[0]
        if p_rows.size or any(k[0] == "score" for k in self.carry_series):
            nbk = SCORE_BOUNDS.size + 1
            ver = req.version[p_rows]
            # one series per (instance, model version): keys seen now or carried from earlier chunks
            key = req.inst["predictor"][p_rows].astype(np.int64) * 1024 + ver
            carried = np.array(
                [k[1] * 1024 + k[2] for k in self.carry_series if k[0] == "score"], dtype=np.int64
            )
            keys = np.unique(np.concatenate([key, carried]))
            series = [(int(k) // 1024, int(k) % 1024) for k in keys]  # one entry per series, not per request
            s_idx = np.searchsorted(keys, key)
            ns = len(series)
            sc = req.extra["score"][p_rows]
            kk = s_idx * nm + req.minute[p_rows]
            counts = np.bincount(
                kk * nbk + np.searchsorted(SCORE_BOUNDS, sc, side="left"), minlength=ns * nm * nbk
            ).reshape(ns, nm, nbk)
            sums = np.bincount(kk, weights=sc, minlength=ns * nm).reshape(ns, nm)
            s_inst = np.array([s[0] for s in series])
            carry_c = np.stack(
                [self.carry_series.get(("score", i, v), np.zeros(nbk + 1))[:nbk] for i, v in series]
            )
            carry_s = np.array(
                [self.carry_series.get(("score", i, v), np.zeros(nbk + 1))[nbk] for i, v in series]
            )
            cum_c, last_c = cumulate(counts, restarts[s_inst], carry_c.astype(np.int64))
            cum_s, last_s = cumulate(sums, restarts[s_inst], carry_s)
            for j, (inst_i, ver_i) in enumerate(series):
                self.carry_series[("score", inst_i, ver_i)] = np.append(last_c[j], last_s[j])
            total = cum_c.sum(axis=2)
            live = total.ravel() > 0  # an attribute set is exported once it has been recorded since start
            frame = pl.DataFrame(
                {
                    "inst": np.repeat(s_inst, nm).astype(np.int32),
                    "sver": sver[s_inst].ravel(),
                    "time_ns": np.tile(time_ns, ns),
                    "start_ns": start_ns[s_inst].ravel(),
                    "count": total.ravel().astype(np.int64),
                    "sum": np.round(cum_s.ravel(), 4),
                    "attrs": np.repeat(np.array([v for _, v in series], dtype=np.int32) + 1, nm),
                }
            )
            hists.append(
                (
                    "prediction.score",
                    SCORE_BOUNDS,
                    frame.filter(pl.Series(live)),
                    cum_c.reshape(-1, nbk)[live],
                )
            )

        # the start time of each instance's next chunk
        self.proc_start_ns = np.where(restarts.any(axis=1), new_start, self.proc_start_ns)
        return numbers_df, hists, mem

    def gpu_nodes(
        self,
        req: Requests,
        rng: np.random.Generator,
        c0: int,
        c1: int,
        restarts: np.ndarray,
        node: dict[str, np.ndarray],
    ) -> pl.DataFrame:
        """DCGM exporter and vLLM samples per GPU node and minute."""
        w = self.w
        nm = c1 - c0
        nodes = np.nonzero(w.inst_model >= 0)[0]
        nn = nodes.size
        util = np.minimum(node["busy"][nodes], 1.0) * 97 + 2
        # a throttled GPU reads as busy all the time: its kernels run slowly, so one is always in flight
        util = util + (97 - util) * node["degraded"][nodes]
        util = np.clip(util + rng.normal(0, 1.5, (nn, nm)), 0, 100)
        speed = node["speed"][nodes]
        fb_used = np.rint(self.fb_used[nodes][:, None] + rng.normal(0, 8, (nn, nm)))
        temp = np.rint(34 + 0.38 * util + 22 * (1 - speed) + rng.normal(0, 0.8, (nn, nm)))
        sm_clock = np.rint((1755 + 225 * util / 100) * speed**0.9 / 15) * 15
        kv = np.round(np.clip(node["kv_ratio"][nodes] * 0.98 + rng.normal(0, 0.004, (nn, nm)), 0, 1), 4)
        mean_svc = np.where(
            node["n_req"][nodes] > 0, node["demand"][nodes] / np.maximum(node["n_req"][nodes], 1), 5.0
        )
        waiting = np.rint(node["backlog"][nodes] / np.maximum(mean_svc, 0.05))
        running = np.rint(node["running"][nodes])

        llm_idx = np.nonzero(req.inst["llm-serving"] >= 0)[0]
        ok = req.extra["llm_cause"][llm_idx] == CAUSE_NONE
        k = req.inst["llm-serving"][llm_idx] * nm + req.minute[llm_idx]
        size = w.n_instances * nm
        prompt = np.bincount(k, weights=req.input_tokens[llm_idx], minlength=size).reshape(-1, nm)[nodes]
        gen = np.bincount(k, weights=req.output_tokens[llm_idx] * ok, minlength=size).reshape(-1, nm)[nodes]
        rs = restarts[nodes]
        counters = {}
        for name, inc in (
            ("vllm:num_preemptions_total", node["preempt"][nodes]),
            ("vllm:prompt_tokens_total", prompt),
            ("vllm:generation_tokens_total", gen),
        ):
            cum, self.carry[name] = cumulate(
                inc.astype(np.int64), rs, self.carry.get(name, np.zeros(nn, dtype=np.int64))
            )
            counters[name] = cum
        values = {
            "DCGM_FI_DEV_GPU_UTIL": np.rint(util),
            "DCGM_FI_DEV_FB_USED": fb_used,
            "DCGM_FI_DEV_GPU_TEMP": temp,
            "DCGM_FI_DEV_SM_CLOCK": sm_clock,
            "vllm:num_requests_running": running,
            "vllm:num_requests_waiting": waiting,
            "vllm:gpu_cache_usage_perc": kv,
            **counters,
        }
        ts_ms = (self.start_ns // 1_000_000 + (c0 + 1 + np.arange(nm)) * 60_000).astype(np.int64)
        frames = []
        for fam, vals in values.items():
            frames.append(
                pl.DataFrame(
                    {
                        "family": np.full(nn * nm, PROM_FAMILIES.index(fam), dtype=np.int8),
                        "inst": np.repeat(nodes, nm).astype(np.int32),
                        "ts_ms": np.tile(ts_ms, nn),
                        "value": vals.ravel().astype(np.float64),
                    }
                )
            )
        return pl.concat(frames)
