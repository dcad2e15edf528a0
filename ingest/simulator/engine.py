"""Minute-by-minute simulation of the platform, one time chunk at a time, vectorised per request.

Each chunk draws every request of the platform (Poisson counts per route and minute, then one row per request)
and pushes the request arrays through the services: token lengths from real traces, a queue per GPU node
(Lindley recursion with a bounded backlog, vLLM-like KV-cache admission), log-normal service times elsewhere,
errors, retries and timeouts. Metrics, usage rows, traces and logs are all aggregations or samples of the same
requests, so they agree with each other. Counters carry over between chunks and restart from zero when a process
restarts (deploys, OOM kills, reboots), as real cumulative exporters do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ingest.simulator.flows import (
    CAUSE_BAD_MODEL,
    CAUSE_INTERNAL,
    CAUSE_NONE,
    CAUSE_POOL,
    CAUSE_QUEUE_FULL,
    CAUSE_QUEUE_TIMEOUT,
    CAUSE_RESET,
    CAUSE_RETRIEVAL,
    MAX_NUM_SEQS,
    PATHS,
    POOL_MAX_WAIT_S,
    QUEUE_TIMEOUT_S,
    RETRIEVER_ATTEMPTS,
    RETRIEVER_BACKOFF_S,
    RETRIEVER_TIMEOUT_S,
    ROUTE_NOISE_PHI,
    ROUTE_NOISE_SIGMA,
    Requests,
    last_reset,
)
from ingest.simulator.meters import Meters
from ingest.simulator.plan import Incident, Plan
from ingest.simulator.world import (
    INITIAL_VERSION,
    LLM_INDEX,
    LLMS,
    MODELS,
    OP_CHAT_LARGE,
    OP_CHAT_SMALL,
    OP_EMBED,
    OP_PREDICT,
    OP_RAG,
    OPERATIONS,
    REGIONS,
    SERVICES,
    SVC,
    World,
)

#: traces kept per minute (head sampling), weighted by operation: the multi-hop rag flow is sampled most
TRACES_PER_MINUTE = (5.0, 1.0)  # a + b x scale
SAMPLE_WEIGHT = {OP_CHAT_SMALL: 0.4, OP_CHAT_LARGE: 1.0, OP_RAG: 6.0, OP_EMBED: 0.2, OP_PREDICT: 0.5}


@dataclass
class Chunk:
    """Everything one chunk produced, ready for the writers."""

    c0: int
    c1: int
    usage: pl.DataFrame
    numbers: pl.DataFrame  # inst, sver, metric, time_ns, start_ns, value
    histograms: list[tuple[str, np.ndarray, pl.DataFrame, np.ndarray]]  # (metric, bounds, frame, counts)
    prom: pl.DataFrame  # family, inst, labels, value, ts_ms
    requests: Requests
    node_state: dict[str, np.ndarray]
    sver: np.ndarray  # (instances, minutes) service version index
    restarts: np.ndarray  # (instances, minutes) bool
    oom: np.ndarray  # (instances, minutes) bool
    memory_mb: np.ndarray  # (instances, minutes)
    restart_count: np.ndarray  # (instances, minutes) restarts so far (as kubelet counts them)


class Engine:
    """Runs the chunks of one simulation in order (state carries from chunk to chunk)."""

    def __init__(self, world: World, plan: Plan, n_minutes: int, start_ns: int, seed: int) -> None:
        self.w, self.plan, self.n, self.start_ns, self.seed = world, plan, n_minutes, start_ns, seed
        w = world
        n_inst = w.n_instances
        rng = np.random.default_rng([seed, 13])
        self.versions: list[str] = []
        self._version_idx: dict[str, int] = {}
        self.service_versions: list[str] = []
        self._sver_idx: dict[str, int] = {}
        # instance -> (from minutes, service version indices)
        per_inst: dict[int, tuple[list[int], list[int]]] = {i: ([], []) for i in range(n_inst)}
        for inst, minute, ver in plan.instance_versions:
            per_inst[inst][0].append(minute)
            per_inst[inst][1].append(self._sver(ver))
        self.inst_versions = {i: (np.array(a), np.array(b)) for i, (a, b) in per_inst.items()}
        # restarts: planned ones plus OOM kills of leaking instances
        oom = []
        self.leak_rows = []
        for inst, s, e, to_limit in plan.leaks:
            k = 1
            while s + round(k * to_limit) < e:
                oom.append((inst, s + round(k * to_limit)))
                k += 1
            self.leak_rows.append((inst, s, e, to_limit))
        restarts = sorted(set(plan.restarts) | set(oom))
        self.rs_inst = np.array([r[0] for r in restarts], dtype=np.int64)
        self.rs_min = np.array([r[1] for r in restarts], dtype=np.int64)
        self.oom_inst = np.array([r[0] for r in sorted(oom)], dtype=np.int64)
        self.oom_min = np.array([r[1] for r in sorted(oom)], dtype=np.int64)
        # carried state
        self.meters = Meters(world, start_ns, self.leak_rows, rng)
        self.last_restart = np.full(n_inst, -(10**6), dtype=np.int64)
        self.restart_count = rng.integers(0, 3, n_inst)
        self.backlog = np.zeros(n_inst)
        self.pool_backlog = np.zeros(n_inst)
        self.noise_rng = np.random.default_rng([seed, 14])
        self.noise_knots: dict[int, np.ndarray] = {}
        self.noise_state = self.noise_rng.normal(0, 1, w.route_rate.size)
        self.gpu_uuid = [
            f"GPU-{rng.bytes(4).hex()}-{rng.bytes(2).hex()}-{rng.bytes(2).hex()}-"
            f"{rng.bytes(2).hex()}-{rng.bytes(6).hex()}"
            for _ in range(n_inst)
        ]
        per_op = np.bincount(w.route_op, weights=w.route_rate, minlength=len(OPERATIONS))
        weight = np.array([SAMPLE_WEIGHT[i] for i in range(len(OPERATIONS))])
        target = TRACES_PER_MINUTE[0] + TRACES_PER_MINUTE[1] * w.scale
        self.sample_p = np.minimum(1.0, target * weight / max((per_op * weight).sum(), 1e-9))  # by operation
        # service -> region -> (first instance, count); contiguous by construction
        self.svc_first = np.zeros((len(SERVICES), len(REGIONS)), dtype=np.int64)
        self.svc_count = np.zeros((len(SERVICES), len(REGIONS)), dtype=np.int64)
        for (s, g), insts in w.service_instances.items():
            self.svc_first[s, g], self.svc_count[s, g] = insts[0], insts.size
        self.node_first = np.zeros((len(LLMS), len(REGIONS)), dtype=np.int64)
        self.node_count = np.zeros((len(LLMS), len(REGIONS)), dtype=np.int64)
        for (m, g), nodes in w.llm_nodes.items():
            self.node_first[m, g], self.node_count[m, g] = nodes[0], nodes.size
        for model in MODELS:
            self._version(f"v{INITIAL_VERSION[model]}")

    # ---- lookups ----------------------------------------------------------------------------------------------
    def _version(self, v: str) -> int:
        if v not in self._version_idx:
            self._version_idx[v] = len(self.versions)
            self.versions.append(v)
        return self._version_idx[v]

    def _sver(self, v: str) -> int:
        if v not in self._sver_idx:
            self._sver_idx[v] = len(self.service_versions)
            self.service_versions.append(v)
        return self._sver_idx[v]

    def active(self, kind: str, c0: int, c1: int) -> list[tuple[Incident, np.ndarray]]:
        mins = np.arange(c0, c1)
        return [
            (inc, inc.intensity(mins))
            for inc in self.plan.incidents
            if inc.kind == kind and inc.start < c1 and inc.end > c0
        ]

    # ---- demand -----------------------------------------------------------------------------------------------
    def route_noise(self, c0: int, c1: int) -> np.ndarray:
        """Slow multiplicative noise per route: AR(1) at hourly knots, linear in between."""
        h0, h1 = c0 // 60, (c1 - 1) // 60 + 1
        for h in range(max(self.noise_knots, default=-1) + 1, h1 + 1):
            eps = self.noise_rng.normal(0, 1, self.noise_state.size)
            self.noise_state = ROUTE_NOISE_PHI * self.noise_state + np.sqrt(1 - ROUTE_NOISE_PHI**2) * eps
            self.noise_knots[h] = self.noise_state.copy()
        for h in [k for k in self.noise_knots if k < h0]:
            del self.noise_knots[h]
        knots = np.stack([self.noise_knots[h] for h in range(h0, h1 + 1)], axis=1)  # (routes, hours + 1)
        pos = (np.arange(c0, c1) - h0 * 60) / 60.0
        lo = np.floor(pos).astype(np.int64)
        frac = pos - lo
        z = knots[:, lo] * (1 - frac) + knots[:, lo + 1] * frac
        return np.exp(ROUTE_NOISE_SIGMA * z - ROUTE_NOISE_SIGMA**2 / 2)

    def version_matrix(self, c0: int, c1: int) -> np.ndarray:
        """Model version index per route and minute, from the rollouts."""
        w = self.w
        mins = np.arange(c0, c1)
        out = np.full((w.route_rate.size, c1 - c0), -1, dtype=np.int32)
        for model in MODELS:
            rows = np.nonzero(
                np.isin(w.route_op, [i for i, op in enumerate(OPERATIONS) if op.model == model])
            )[0]
            if rows.size == 0:
                continue
            tv = np.full(
                (len(w.tenants), mins.size), self._version(f"v{INITIAL_VERSION[model]}"), dtype=np.int32
            )
            for ro in self.plan.rollouts:
                if ro.model == model and ro.minute < c1:
                    tv[ro.cohort[:, None] & (mins >= ro.minute)[None, :]] = self._version(ro.version)
            out[rows] = tv[w.route_tenant[rows]]
        return out

    def service_version_matrix(self, c0: int, c1: int) -> np.ndarray:
        mins = np.arange(c0, c1)
        out = np.empty((self.w.n_instances, mins.size), dtype=np.int32)
        for i, (starts, vers) in self.inst_versions.items():
            out[i] = vers[np.searchsorted(starts, mins, side="right") - 1]
        return out

    # ---- one chunk --------------------------------------------------------------------------------------------
    def step(self, c0: int, c1: int) -> Chunk:
        w = self.w
        rng = np.random.default_rng([self.seed, 12, c0])
        nm = c1 - c0
        mins = np.arange(c0, c1)
        epoch_min = self.start_ns // 60_000_000_000 + mins
        n_inst = w.n_instances

        # demand per route and minute
        prof = w.demand_profile(epoch_min)
        burst = np.exp(rng.normal(0, 0.04, prof.shape))
        growth = np.exp(w.tenant_growth[:, None] * (mins[None, :] / 1440.0))
        rate = (
            w.route_rate[:, None]
            * (prof * burst)[w.route_op, w.route_region]
            * growth[w.route_tenant]
            * self.route_noise(c0, c1)
        )
        long_rate = np.zeros_like(rate)
        for inc, k in self.active("tenant_surge", c0, c1):
            r = np.nonzero(
                (w.route_tenant == inc.tenant) & (w.route_op == inc.op) & (w.route_region == inc.region)
            )
            rate[r] += inc.magnitude * k
        for inc, k in self.active("kv_cache_exhaustion", c0, c1):
            r = np.nonzero(
                (w.route_tenant == inc.tenant) & (w.route_op == inc.op) & (w.route_region == inc.region)
            )
            long_rate[r] += inc.magnitude * k
        counts = rng.poisson(rate)
        long_counts = rng.poisson(long_rate)
        cells = np.concatenate(
            [
                np.repeat(np.arange(counts.size), counts.ravel()),
                np.repeat(np.arange(counts.size), long_counts.ravel()),
            ]
        )
        is_long = np.zeros(cells.size, dtype=bool)
        is_long[counts.sum() :] = True
        route, minute = cells // nm, cells % nm
        vmat = self.version_matrix(c0, c1)
        req = Requests(
            route=route,
            minute=minute,
            second=rng.random(cells.size) * 60.0,
            op=w.route_op[route],
            region=w.route_region[route],
            tenant=w.route_tenant[route],
            version=vmat[route, minute],
            input_tokens=np.zeros(cells.size, dtype=np.int64),
            output_tokens=np.zeros(cells.size, dtype=np.int64),
        )
        req.extra["long"] = is_long
        self._tokens(req, rng, c0, c1)
        self._assign(req, rng)

        sver = self.service_version_matrix(c0, c1)
        restarts = np.zeros((n_inst, nm), dtype=bool)
        sel = (self.rs_min >= c0) & (self.rs_min < c1)
        restarts[self.rs_inst[sel], self.rs_min[sel] - c0] = True
        oom = np.zeros((n_inst, nm), dtype=bool)
        sel = (self.oom_min >= c0) & (self.oom_min < c1)
        oom[self.oom_inst[sel], self.oom_min[sel] - c0] = True
        restart_idx = last_reset(restarts, self.last_restart - c0)  # chunk-relative minute of last restart

        node_state = self._llm(req, rng, c0, c1)
        self._hops(req, rng, c0, c1, restarts)
        self._failures(req, rng, c0, c1, restarts)
        chunk_usage = self.meters.usage(req, vmat, c0, c1)
        numbers, hists, memory = self.meters.instances(
            req, rng, c0, c1, restarts, restart_idx, sver, node_state
        )
        prom = self.meters.gpu_nodes(req, rng, c0, c1, restarts, node_state)

        # carry restart bookkeeping
        any_r = restarts.any(axis=1)
        self.last_restart = np.where(any_r, c0 + restart_idx[:, -1], self.last_restart)
        restart_count = self.restart_count[:, None] + np.cumsum(restarts, axis=1)
        self.restart_count = restart_count[:, -1]
        return Chunk(
            c0,
            c1,
            chunk_usage,
            numbers,
            hists,
            prom,
            req,
            node_state,
            sver,
            restarts,
            oom,
            memory,
            restart_count,
        )

    # ---- request attributes -----------------------------------------------------------------------------------
    def _tokens(self, req: Requests, rng: np.random.Generator, c0: int, c1: int) -> None:
        pools = self.w.sources.pools
        long = req.extra["long"]
        for i, op in enumerate(OPERATIONS):
            if not op.tokens:
                continue
            sel = np.nonzero((req.op == i) & ~long)[0]
            inp, out = pools[op.tokens].sample(rng, sel.size)
            if i == OP_EMBED:
                inp, out = np.minimum(inp, 2048), np.zeros_like(out)
            req.input_tokens[sel], req.output_tokens[sel] = inp, out
        sel = np.nonzero(long)[0]
        req.input_tokens[sel], req.output_tokens[sel] = pools["mooncake_long"].sample(rng, sel.size)
        template = np.zeros(req.n, dtype=np.int32)  # 0 = the standing template
        for inc, k in self.active("token_inflation", c0, c1):
            hit = (req.op == OP_RAG) & (rng.random(req.n) < k[req.minute])
            factor = inc.magnitude * rng.uniform(0.9, 1.1, hit.sum())
            req.input_tokens[hit] = np.rint(req.input_tokens[hit] * factor).astype(np.int64)
            template[hit] = 1 + self.plan.incidents.index(inc)
        req.extra["template"] = template
        # the embedder sees the whole input of /v1/embeddings but only the short query of a rag request
        req.extra["embed_tokens"] = np.where(
            req.op == OP_EMBED, req.input_tokens, np.where(req.op == OP_RAG, rng.integers(8, 80, req.n), 0)
        )

    def _assign(self, req: Requests, rng: np.random.Generator) -> None:
        """Pick the instance of every service a request crosses (uniform load balancing)."""
        for s, spec in enumerate(SERVICES):
            u = rng.random(req.n)
            if spec.name == "llm-serving":
                model = np.full(req.n, -1)
                for i, op in enumerate(OPERATIONS):
                    if "llm-serving" in op.path:
                        model[req.op == i] = LLM_INDEX[op.model]
                on = model >= 0
                m = np.maximum(model, 0)
                inst = self.node_first[m, req.region] + np.floor(u * self.node_count[m, req.region]).astype(
                    np.int64
                )
            else:
                on = np.isin(req.op, [i for i, op in enumerate(OPERATIONS) if spec.name in op.path])
                if spec.name == "gateway":
                    on[:] = True
                inst = self.svc_first[s, req.region] + np.floor(u * self.svc_count[s, req.region]).astype(
                    np.int64
                )
            req.inst[spec.name] = np.where(on, inst, -1)

    # ---- GPU nodes --------------------------------------------------------------------------------------------
    def _llm(self, req: Requests, rng: np.random.Generator, c0: int, c1: int) -> dict[str, np.ndarray]:
        """vLLM-like nodes: per-minute work, KV occupancy, bounded backlog; per-request TTFT/TPOT/duration."""
        w = self.w
        nm = c1 - c0
        n_inst = w.n_instances
        node = req.inst["llm-serving"]
        on = node >= 0
        idx = np.nonzero(on)[0]
        nd, mi = node[idx], req.minute[idx]
        model = w.inst_model[nd]
        prefill_tps = np.array([m.prefill_tps for m in LLMS])[model]
        tpot0 = np.array([m.tpot_s for m in LLMS])[model]
        slow = np.ones(idx.size)
        bad_err = np.zeros(idx.size)
        for inc, k in self.active("bad_deploy", c0, c1):
            bad = self._version(inc.labels["model_version"])
            hit = (req.version[idx] == bad) & (model == LLM_INDEX[inc.model])
            slow[hit] *= 1 + (inc.extra - 1) * k[mi[hit]]
            bad_err[hit] += inc.magnitude * k[mi[hit]]
        speed = np.ones((n_inst, nm))
        degraded = np.zeros((n_inst, nm))
        for inc, k in self.active("gpu_node_degraded", c0, c1):
            speed[inc.node] = 1 - (1 - inc.magnitude) * k
            degraded[inc.node] = k
        sp = speed[nd, mi]
        inp, out = req.input_tokens[idx], req.output_tokens[idx]
        prefill = inp / prefill_tps
        svc = (prefill + out * tpot0 * slow) / sp
        key = nd * nm + mi
        demand = np.bincount(key, weights=svc, minlength=n_inst * nm).reshape(n_inst, nm)
        occ = np.bincount(key, weights=(inp + out / 2.0) * svc / 60.0, minlength=n_inst * nm).reshape(
            n_inst, nm
        )
        n_req = np.bincount(key, minlength=n_inst * nm).reshape(n_inst, nm)
        cap = np.maximum(w.inst_concurrency, 1e-9)[:, None] * 60.0
        kv_cap = np.maximum(w.inst_kv_tokens, 1.0)[:, None]
        kv_ratio = occ / kv_cap
        eff = cap * np.minimum(1.0, 0.92 / np.maximum(kv_ratio, 1e-9))
        bmax = eff * (QUEUE_TIMEOUT_S / 60.0)
        wait_s = np.zeros((n_inst, nm))
        overflow = np.zeros((n_inst, nm))
        busy = np.zeros((n_inst, nm))
        backlog_end = np.zeros((n_inst, nm))
        b = self.backlog.copy()
        for j in range(nm):  # Lindley recursion with a bounded queue, vectorised over nodes
            x = b + demand[:, j] - eff[:, j]
            over = np.maximum(0.0, x - bmax[:, j])
            nb = np.clip(x, 0.0, bmax[:, j])
            wait_s[:, j] = 60.0 * (b + nb) / 2.0 / eff[:, j]
            overflow[:, j] = np.where(demand[:, j] > 0, over / np.maximum(demand[:, j], 1e-9), 0.0)
            busy[:, j] = (b + demand[:, j] - nb - over) / eff[:, j]
            backlog_end[:, j] = nb
            b = nb
        self.backlog = b
        rho = np.minimum(demand / eff, 0.97)
        wait_s += 0.06 * rho**6 / (1 - rho)
        tpot_mult = (1 + 0.4 * np.minimum(demand / eff, 1.0)) / speed
        # per request
        ttft = (
            0.012
            + wait_s[nd, mi] * rng.uniform(0.6, 1.4, idx.size)
            + prefill * (1 + 0.3 * rho[nd, mi]) / sp * rng.lognormal(0, 0.15, idx.size)
        )
        tpot = tpot0 * slow * tpot_mult[nd, mi] * rng.lognormal(0, 0.1, idx.size)
        timeout = wait_s[nd, mi] > QUEUE_TIMEOUT_S * 0.9
        full = rng.random(idx.size) < overflow[nd, mi]
        dur = np.where(full, 0.004, np.where(timeout, QUEUE_TIMEOUT_S, ttft + out * tpot))
        cause = np.full(idx.size, CAUSE_NONE)
        err_p = SERVICES[SVC["llm-serving"]].base_error + bad_err
        cause[rng.random(idx.size) < err_p] = CAUSE_INTERNAL
        cause[(cause == CAUSE_INTERNAL) & (bad_err > 0) & (rng.random(idx.size) < 0.95)] = CAUSE_BAD_MODEL
        cause[timeout] = CAUSE_QUEUE_TIMEOUT
        cause[full] = CAUSE_QUEUE_FULL
        for name, val in (("ttft", ttft), ("tpot", tpot), ("llm", dur)):
            arr = np.zeros(req.n)
            arr[idx] = val
            req.dur[name] = arr
        llm_cause = np.zeros(req.n, dtype=np.int64)
        llm_cause[idx] = cause
        req.extra["llm_cause"] = llm_cause
        preempt = rng.poisson(n_req * np.clip(kv_ratio - 0.92, 0.0, 2.0) * 0.8)
        return {
            "demand": demand,
            "eff": eff,
            "busy": busy,
            "wait_s": wait_s,
            "kv_ratio": kv_ratio,
            "degraded": degraded,
            "n_req": n_req,
            "backlog": backlog_end,
            "speed": speed,
            "preempt": preempt,
            "running": np.minimum(MAX_NUM_SEQS, demand * (1 + 0.4 * np.minimum(demand / eff, 1.0)) / 60.0),
        }

    # ---- CPU services -----------------------------------------------------------------------------------------
    def _hops(self, req: Requests, rng: np.random.Generator, c0: int, c1: int, restarts: np.ndarray) -> None:
        w = self.w
        nm = c1 - c0
        n_inst = w.n_instances
        vec_mult = np.ones((len(REGIONS), nm))
        for inc, k in self.active("vector_db_latency", c0, c1):
            vec_mult[inc.region] *= np.exp(np.log(inc.magnitude) * k)
        for spec in SERVICES:
            if spec.name == "llm-serving":
                continue
            inst = req.inst[spec.name]
            idx = np.nonzero(inst >= 0)[0]
            key = inst[idx] * nm + req.minute[idx]
            load = np.bincount(key, minlength=n_inst * nm).reshape(n_inst, nm) / spec.capacity_per_min
            factor = 1 + 0.35 * np.minimum(load, 1.5) ** 4
            d = (
                spec.median_ms
                / 1000.0
                * factor[inst[idx], req.minute[idx]]
                * rng.lognormal(0, spec.sigma, idx.size)
            )
            if spec.name == "embedder":
                d += req.extra["embed_tokens"][idx] * 4e-6
            full = np.zeros(req.n)
            full[idx] = d
            if spec.name == "retriever":
                mult = vec_mult[req.region[idx], req.minute[idx]]
                full[idx] = d * mult
                for a in range(2, RETRIEVER_ATTEMPTS + 1):  # retries hit the same (slow) cluster
                    again = np.zeros(req.n)
                    again[idx] = d * mult * rng.lognormal(0, 0.3, idx.size)
                    req.dur[f"retrieve_{a}"] = again
            req.dur[spec.name] = full
        if "predictor" in req.inst:
            req.dur["model"] = np.where(req.inst["predictor"] >= 0, 0.003 * rng.lognormal(0, 0.3, req.n), 0.0)

    def _failures(
        self, req: Requests, rng: np.random.Generator, c0: int, c1: int, restarts: np.ndarray
    ) -> None:
        """Walk each operation's path: the first failing hop stops the request; callers see the error."""
        n = req.n
        nm = c1 - c0
        w = self.w
        t = RETRIEVER_TIMEOUT_S
        # retrieval with retries: each attempt times out after t; after the last one rag-api either gives up
        # (504) or answers without context
        attempts = np.ones(n, dtype=np.int64)
        retrieval = np.minimum(req.dur["retriever"], t)
        timed_out = req.dur["retriever"] > t
        for a in range(2, RETRIEVER_ATTEMPTS + 1):
            attempts += timed_out
            retrieval += np.where(
                timed_out, RETRIEVER_BACKOFF_S[a - 2] + np.minimum(req.dur[f"retrieve_{a}"], t), 0.0
            )
            timed_out = timed_out & (req.dur[f"retrieve_{a}"] > t)
        give_up = timed_out & (rng.random(n) < 0.3)
        req.extra["attempts"] = np.where(req.op == OP_RAG, attempts, 0)
        req.extra["no_context"] = timed_out & ~give_up
        # rag-api holds a pooled vector-DB connection for the whole retrieval: slow retrieval exhausts the pool,
        # requests queue for a connection (bounded wait, then shed) -- the cascade that reaches callers
        rag_rows = np.nonzero(req.op == OP_RAG)[0]
        inst = req.inst["rag-api"][rag_rows]
        n_inst = w.n_instances
        key = inst * nm + req.minute[rag_rows]
        work = np.bincount(key, weights=retrieval[rag_rows], minlength=n_inst * nm).reshape(n_inst, nm)
        cap = np.maximum(w.inst_concurrency, 1e-9)[:, None] * 60.0
        b = self.pool_backlog.copy()
        pool_wait = np.zeros((n_inst, nm))
        shed = np.zeros((n_inst, nm))
        for j in range(nm):
            x = b + work[:, j] - cap[:, 0]
            bmax = cap[:, 0] * POOL_MAX_WAIT_S / 60.0
            nb = np.clip(x, 0.0, bmax)
            pool_wait[:, j] = 60.0 * (b + nb) / 2.0 / cap[:, 0]
            shed[:, j] = np.where(
                work[:, j] > 0, np.maximum(0.0, x - bmax) / np.maximum(work[:, j], 1e-9), 0.0
            )
            b = nb
        self.pool_backlog = b
        # below saturation a request waits about one retrieval time x rho / (1 - rho) (M/M/1)
        n_ret = np.bincount(key, minlength=n_inst * nm).reshape(n_inst, nm)
        rho = np.minimum(work / cap, 0.97)
        pool_wait += work / np.maximum(n_ret, 1) * rho / (1 - rho)
        wait = np.zeros(n)
        wait[rag_rows] = np.minimum(
            pool_wait[inst, req.minute[rag_rows]] * rng.uniform(0.7, 1.3, rag_rows.size), POOL_MAX_WAIT_S
        )
        pool_full = np.zeros(n, dtype=bool)
        pool_full[rag_rows] = rng.random(rag_rows.size) < shed[inst, req.minute[rag_rows]]
        wait[pool_full] = POOL_MAX_WAIT_S
        req.dur["pool_wait"] = wait
        req.extra["pool_full"] = pool_full

        fail_at = np.full(n, 99, dtype=np.int64)  # hop index of the failure (99 = none)
        cause = np.zeros(n, dtype=np.int64)
        for op, path in PATHS.items():
            rows = np.nonzero(req.op == op)[0]
            for h, (svc, role) in reversed(list(enumerate(path))):
                # reversed: an earlier hop's failure overrides a later one
                c: int | np.ndarray
                if role == "timeout":
                    f = give_up[rows]
                    c = CAUSE_RETRIEVAL
                elif role == "pool":
                    f = pool_full[rows]
                    c = CAUSE_POOL
                elif role == "llm":
                    c_llm = req.extra["llm_cause"][rows]
                    f = c_llm != CAUSE_NONE
                    c = c_llm
                else:
                    inst = req.inst[svc][rows]
                    reset = restarts[inst, req.minute[rows]]
                    p = SERVICES[SVC[svc]].base_error + 0.08 * reset
                    f = rng.random(rows.size) < p
                    c = np.where(reset, CAUSE_RESET, CAUSE_INTERNAL)
                fail_at[rows[f]] = h
                cause[rows[f]] = np.broadcast_to(c, rows.shape)[f]
        gw = req.inst["gateway"]
        gw_reset = restarts[gw, req.minute]
        gw_fail = rng.random(n) < SERVICES[0].base_error + 0.08 * gw_reset
        req.extra["fail_at"] = fail_at
        req.extra["cause"] = cause
        req.extra["gw_fail"] = gw_fail & (fail_at == 99)
        req.extra["gw_cause"] = np.where(gw_reset, CAUSE_RESET, CAUSE_INTERNAL)
        req.extra["error"] = (fail_at < 99) | gw_fail

        # durations as callers see them
        def reached(h: int) -> np.ndarray:
            return fail_at >= h

        dur = req.dur
        llm = dur["llm"]
        rag = req.op == OP_RAG
        rag_total = (
            dur["rag-api"]
            + dur["embedder"] * reached(1)
            + dur["pool_wait"] * reached(2)
            + retrieval * reached(3)
            + dur["reranker"] * reached(5)
            + llm * reached(6)
        )
        pred_total = dur["predictor"] + (dur["feature-store"] + dur["model"]) * reached(1)
        down = np.select(
            [rag, req.op == OP_PREDICT, req.op == OP_EMBED],
            [rag_total, pred_total, dur["embedder"]],
            default=llm,
        )
        dur["rag_total"] = np.where(rag, rag_total, 0.0)
        dur["predict_total"] = np.where(req.op == OP_PREDICT, pred_total, 0.0)
        dur["retrieval"] = np.where(rag, retrieval, 0.0)
        dur["gateway_total"] = dur["gateway"] + down

        # prediction scores (only for requests that got features)
        alpha, beta = np.full(n, 1.3), np.full(n, 6.5)
        for inc, k in self.active("prediction_drift", c0, c1):
            kk = k[req.minute] * inc.magnitude
            alpha, beta = alpha + 2.4 * kk, beta - 3.2 * kk
        req.extra["score"] = np.where(req.op == OP_PREDICT, rng.beta(alpha, np.maximum(beta, 0.5)), -1.0)
