"""What happens when: injected incidents (the ground truth), change events and their effects on the fleet.

The plan is drawn once per run from its own random stream. Incidents never overlap, keep at least an hour apart,
last 20-120 minutes and start after a warm-up (the first day; the first 30 % of runs shorter than two days) so
detectors have history. Routine changes (deploys, rollouts, config, flags, scaling, infra) are spread over the
whole run and keep clear of incident windows, so every change that coincides with an incident is its cause.
About five incidents per day after the warm-up (at least one of each kind when the run is long enough, ~1 day).

=====================  ==============================================  ===================================
kind                   effect                                          cause event / root-cause labels
=====================  ==============================================  ===================================
bad_deploy             canary version of m-small/m-large fails 20-35 %  model_rollout; model, model_version
                       and is ~2x slower, for its tenant cohort only
tenant_surge           one big tenant adds ~1x the region's m-large     none (rate-limit config at the end
                       capacity: queue, TTFT, 503/504 for everyone      sometimes); tenant, region, model
gpu_node_degraded      one GPU node throttled to 30-45 % speed: SM      infra (driver update) or none;
                       clock down, util pegged, TPOT/latency up         instance, region, model
vector_db_latency      retriever latency x100-200 (exponential ramp),   config (ef_search) or none; region
                       retries, connection-pool waits and 504s at
                       rag-api, slower gateway
kv_cache_exhaustion    long prompts (Mooncake >= 32k tokens) from one   none; tenant, region, model
                       tenant: KV usage ~100 %, preemptions, TTFT up
token_inflation        rag prompt template x1.8-2.4 input tokens:       config; operation, prompt_template
                       tokens, cost and TTFT up
prediction_drift       m-risk score distribution shifts up; feature     feature_flag; model, feature_view
                       null-rate warnings
memory_leak            new version of one service in one region leaks   deploy; region, service.version
                       to its limit, OOM-killed repeatedly
=====================  ==============================================  ===================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ingest.simulator.world import (
    INITIAL_VERSION,
    LLM_INDEX,
    LLMS,
    OP_CHAT_LARGE,
    OP_RAG,
    OPERATIONS,
    REGION_WEIGHT,
    REGIONS,
    SERVICES,
    SVC,
    World,
)

KINDS = (
    "bad_deploy",
    "tenant_surge",
    "gpu_node_degraded",
    "vector_db_latency",
    "kv_cache_exhaustion",
    "token_inflation",
    "prediction_drift",
    "memory_leak",
)
INCIDENTS_PER_DAY = 5.0
MIN_GAP_MIN = 60
MIN_DURATION, MAX_DURATION = 20, 120
#: routine changes per simulated day, by kind
ROUTINE_PER_DAY = {
    "deploy": 4.0,
    "config": 3.0,
    "feature_flag": 2.0,
    "scale": 2.0,
    "infra": 1.0,
    "model_rollout": 0.8,
}
LEAKY_SERVICES = ("rag-api", "embedder", "reranker", "feature-store", "gateway")


@dataclass
class Change:
    """One change event (``events.jsonl`` row)."""

    minute: int
    second: int
    service: str
    kind: str
    title: str
    attributes: dict[str, str]
    id: str = ""


@dataclass
class Incident:
    """One injected incident: its ground truth and the parameters of its effect."""

    id: str
    kind: str
    start: int  # first affected minute (index from the run start)
    end: int  # first unaffected minute
    service: str
    labels: dict[str, str]
    affected_services: tuple[str, ...]
    affected_metrics: tuple[str, ...]
    description: str
    region: int = -1
    tenant: int = -1
    node: int = -1
    op: int = -1
    model: str = ""
    magnitude: float = 1.0  # kind-specific size of the effect
    extra: float = 0.0  # kind-specific second parameter
    ramp: int = 3  # minutes to full intensity
    cause: Change | None = None

    @property
    def event_id(self) -> str | None:
        return self.cause.id if self.cause else None

    def intensity(self, minutes: np.ndarray) -> np.ndarray:
        """Effect intensity in [0, 1] at each minute (ramp up, plateau, two-minute ramp down)."""
        up = np.clip((minutes - self.start + 1) / self.ramp, 0.0, 1.0)
        down = np.clip((self.end - minutes) / 2.0, 0.0, 1.0)
        inside = (minutes >= self.start) & (minutes < self.end)
        return np.where(inside, np.minimum(up, down), 0.0)


@dataclass
class Rollout:
    """From ``minute`` on, tenants in ``cohort`` use ``version`` of ``model``."""

    minute: int
    model: str
    version: str
    cohort: np.ndarray  # bool per tenant


@dataclass
class Plan:
    """Everything time-varying that is not demand noise."""

    warmup: int
    incidents: list[Incident]
    changes: list[Change]
    rollouts: list[Rollout]
    restarts: list[tuple[int, int]]  # (instance, minute) process restarts
    instance_versions: list[tuple[int, int, str]]  # (instance, from minute, service.version)
    leaks: list[tuple[int, int, int, float]]  # (instance, start, end, minutes to reach the memory limit)
    prompt_templates: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, template)


def _bump(version: str, part: int) -> str:
    nums = [int(x) for x in version.split(".")]
    nums[part] += 1
    for i in range(part + 1, 3):
        nums[i] = 0
    return ".".join(map(str, nums))


def _hex(rng: np.random.Generator, n: int) -> str:
    return rng.bytes(n).hex()


class _Builder:
    """Places incidents and routine changes, then replays them in time order to resolve versions."""

    def __init__(self, world: World, n_minutes: int, rng: np.random.Generator) -> None:
        self.w = world
        self.n = n_minutes
        self.rng = rng
        self.changes: list[Change] = []
        self.rollouts: list[Rollout] = []
        self.restarts: list[tuple[int, int]] = []
        self.inst_versions: list[tuple[int, int, str]] = []
        self.leaks: list[tuple[int, int, int, float]] = []
        self.templates: list[tuple[int, int, str]] = []
        self.svc_version = {
            (s, g): spec.version for s, spec in enumerate(SERVICES) for g in range(len(REGIONS))
        }
        self.model_active = dict(INITIAL_VERSION)  # version most tenants use
        self.model_max = dict(INITIAL_VERSION)  # highest number ever rolled out (failed ones stay burnt)
        self.model_busy = dict.fromkeys(INITIAL_VERSION, -1)  # a rollout is in progress until then
        self.template_no = 7
        for i in range(world.n_instances):
            self.inst_versions.append((i, -(10**9), SERVICES[world.inst_service[i]].version))

    # ---- helpers -------------------------------------------------------------------------------------------
    def change(self, minute: int, service: str, kind: str, title: str, **attributes: str) -> Change:
        ch = Change(
            max(0, min(self.n - 1, minute)),
            int(self.rng.integers(0, 60)),
            service,
            kind,
            title,
            dict(attributes),
        )
        self.changes.append(ch)
        return ch

    def region_pick(self, candidates: list[int] | None = None) -> int:
        cand = list(range(len(REGIONS))) if candidates is None else candidates
        p = REGION_WEIGHT[cand] / REGION_WEIGHT[cand].sum()
        return int(cand[self.rng.choice(len(cand), p=p)])

    def deploy(self, minute: int, service: int, regions: list[int], version: str, *, rolling: bool) -> None:
        """Restart the service's instances in ``regions`` at ``minute`` (rolling: one per minute)."""
        k = 0
        for g in regions:
            self.svc_version[(service, g)] = version
            for inst in self.w.service_instances[(service, g)]:
                at = minute + (k % 5 if rolling else 0)
                k += 1
                if at < self.n:
                    self.restarts.append((int(inst), at))
                self.inst_versions.append((int(inst), at, version))

    def cohort_by_share(self, model: str, target: float) -> tuple[np.ndarray, float] | None:
        """Canary cohort: tenants (in canary order, skipping any that would overshoot) carrying about ``target``
        of ``model``'s traffic, and the share they carry; None when fewer than two tenants use the model."""
        w = self.w
        on = np.isin(w.route_op, [i for i, op in enumerate(OPERATIONS) if op.model == model])
        per_tenant = np.bincount(w.route_tenant[on], weights=w.route_rate[on], minlength=len(w.tenants))
        users = np.nonzero(per_tenant > 0)[0]
        if users.size < 2:
            return None
        share = per_tenant / per_tenant.sum()
        cohort = np.zeros(len(w.tenants), dtype=bool)
        total = 0.0
        for t in users[np.argsort(w.tenant_u[users])]:  # plan time, once per rollout
            if total + share[t] <= 1.2 * target:
                cohort[t] = True
                total += share[t]
        if not cohort.any():
            smallest = users[np.argmin(share[users])]
            cohort[smallest], total = True, float(share[smallest])
        return cohort, float(total)

    def top_tenant(self, ops: list[int], region: int, top: int = 3) -> tuple[int, int]:
        """A big tenant with a route for one of ``ops`` in ``region``: (tenant, op)."""
        w = self.w
        sel = np.nonzero(np.isin(w.route_op, ops) & (w.route_region == region))[0]
        sel = sel[np.argsort(-w.route_rate[sel], kind="stable")][:top]
        r = int(sel[self.rng.integers(0, sel.size)])
        return int(w.route_tenant[r]), int(w.route_op[r])

    def busiest_region(self, ops: list[int]) -> int:
        """A region drawn with probability growing with the square of its traffic for ``ops``."""
        w = self.w
        sel = np.isin(w.route_op, ops)
        traffic = np.bincount(w.route_region[sel], weights=w.route_rate[sel], minlength=len(REGIONS)) ** 2
        return int(self.rng.choice(len(REGIONS), p=traffic / traffic.sum()))

    def regions_with(self, ops: list[int]) -> list[int]:
        return sorted({int(g) for g in self.w.route_region[np.isin(self.w.route_op, ops)]})

    # ---- incidents -----------------------------------------------------------------------------------------
    def schedule(self) -> tuple[int, list[tuple[str, int, int]]]:
        days = self.n / 1440.0
        warmup = 1440 if days >= 2 else int(0.3 * self.n)
        available = self.n - warmup - 30
        want = max(len(KINDS), round(INCIDENTS_PER_DAY * available / 1440.0))
        n_inc = max(0, min(want, available // (MIN_DURATION + MIN_GAP_MIN)))
        kinds = list(self.rng.permutation(KINDS))
        kinds += list(self.rng.choice(KINDS, size=max(0, n_inc - len(kinds))))
        kinds = kinds[:n_inc]
        slots = []
        slot = available / max(n_inc, 1)
        for i, kind in enumerate(kinds):
            s0 = warmup + int(i * slot) + MIN_GAP_MIN // 2
            room = int(slot) - MIN_GAP_MIN
            dur = int(self.rng.integers(MIN_DURATION, min(MAX_DURATION, room) + 1))
            start = s0 + int(self.rng.integers(0, room - dur + 1))
            slots.append((str(kind), start, start + dur))
        return warmup, slots

    def incident(self, kind: str, start: int, end: int) -> Incident:
        """Choose the incident's target and register its changes, rollouts and restarts."""
        cause: Change | None
        w, rng = self.w, self.rng
        lag = int(rng.integers(0, 3))
        if kind == "bad_deploy":
            models = [m for m in ("m-large", "m-small") if self.cohort_by_share(m, 0.3) is not None]
            model = str(rng.choice(models))
            picked = self.cohort_by_share(model, float(rng.uniform(0.2, 0.4)))
            assert picked is not None
            cohort, share = picked
            old_v = self.model_active[model]
            new_v = self.model_max[model] + 1
            self.model_max[model] = new_v  # the bad number is burnt; the next rollout takes new_v + 1
            cause = self.change(
                start - lag,
                "llm-serving",
                "model_rollout",
                f"Roll out {model} v{new_v} to canary cohort",
                model=model,
                model_version=f"v{new_v}",
                previous_version=f"v{old_v}",
                strategy="canary",
                traffic_share=f"{share:.2f}",
                tenants=str(int(cohort.sum())),
            )
            self.rollouts.append(Rollout(start, model, f"v{new_v}", cohort))
            self.rollouts.append(Rollout(end, model, f"v{old_v}", np.ones(len(w.tenants), dtype=bool)))
            self.change(
                end,
                "llm-serving",
                "model_rollout",
                f"Roll back {model} canary v{new_v} to v{old_v}",
                model=model,
                model_version=f"v{old_v}",
                previous_version=f"v{new_v}",
                strategy="rollback",
            )
            affected = ["llm-serving", "gateway"] + (["rag-api"] if model == "m-large" else [])
            return Incident(
                "",
                kind,
                start,
                end,
                "llm-serving",
                {"model": model, "model_version": f"v{new_v}"},
                tuple(affected),
                ("errors", "gen_ai.server.request.duration", "http.server.request.duration"),
                f"{model} v{new_v} fails and slows requests of the tenants routed to it",
                model=model,
                magnitude=float(rng.uniform(0.2, 0.35)),
                extra=float(rng.uniform(1.8, 2.6)),
                cause=cause,
            )
        if kind == "tenant_surge":
            g = self.region_pick(self.regions_with([OP_CHAT_LARGE]))
            tenant, op = self.top_tenant([OP_CHAT_LARGE], g)
            nodes = w.llm_nodes[(LLM_INDEX["m-large"], g)]
            cap = (w.inst_concurrency[nodes] * 60.0).sum()  # engine-seconds per minute
            extra_rate = float(rng.uniform(0.9, 1.3)) * cap / w.op_service_s[op]
            if rng.random() < 0.5:
                self.change(
                    end,
                    "gateway",
                    "config",
                    f"Rate limit for {w.tenants[tenant]} set to 600 rpm",
                    tenant=w.tenants[tenant],
                    limit_rpm="600",
                )
            return Incident(
                "",
                kind,
                start,
                end,
                "gateway",
                {"tenant": w.tenants[tenant], "region": REGIONS[g], "model": "m-large"},
                ("gateway", "llm-serving", "rag-api"),
                (
                    "requests",
                    "vllm:num_requests_waiting",
                    "gen_ai.server.time_to_first_token",
                    "http.server.request.duration",
                ),
                f"traffic surge from {w.tenants[tenant]} saturates the m-large queue in {REGIONS[g]}",
                region=g,
                tenant=tenant,
                op=op,
                model="m-large",
                magnitude=extra_rate,
                ramp=4,
            )
        if kind == "gpu_node_degraded":
            g = self.region_pick()
            m = int(rng.integers(0, len(LLMS)))
            nodes = w.llm_nodes[(m, g)]
            node = int(nodes[rng.integers(0, nodes.size)])
            host = w.inst_name[node]
            cause = None
            if rng.random() < 0.5:
                cause = self.change(
                    start - lag,
                    "llm-serving",
                    "infra",
                    f"NVIDIA driver 550.54.15 -> 550.90.07 on {host}",
                    instance=host,
                    region=REGIONS[g],
                    driver="550.90.07",
                )
            self.change(
                end, "llm-serving", "infra", f"Reboot {host} (GPU reset)", instance=host, region=REGIONS[g]
            )
            self.restarts.append((node, min(end, self.n - 1)))
            return Incident(
                "",
                kind,
                start,
                end,
                "llm-serving",
                {"instance": host, "region": REGIONS[g], "model": LLMS[m].name},
                ("llm-serving",),
                (
                    "DCGM_FI_DEV_GPU_UTIL",
                    "DCGM_FI_DEV_SM_CLOCK",
                    "gen_ai.server.request.duration",
                    "gen_ai.server.time_per_output_token",
                ),
                f"GPU of {host} throttled (hardware slowdown)",
                region=g,
                node=node,
                model=LLMS[m].name,
                magnitude=float(rng.uniform(0.3, 0.45)),
                cause=cause,
            )
        if kind == "vector_db_latency":
            g = self.busiest_region([OP_RAG])
            cause = None
            if rng.random() < 0.5:
                cause = self.change(
                    start - lag,
                    "retriever",
                    "config",
                    "retriever: hnsw ef_search 128 -> 1024 on collection kb-main",
                    region=REGIONS[g],
                    parameter="ef_search",
                    value="1024",
                    previous="128",
                )
                self.change(
                    end,
                    "retriever",
                    "config",
                    "retriever: hnsw ef_search 1024 -> 128 (revert)",
                    region=REGIONS[g],
                    parameter="ef_search",
                    value="128",
                    previous="1024",
                )
            return Incident(
                "",
                kind,
                start,
                end,
                "retriever",
                {"region": REGIONS[g]},
                ("retriever", "rag-api", "gateway"),
                ("http.server.request.duration", "errors"),
                f"vector-db latency in {REGIONS[g]} propagates to rag-api and gateway",
                region=g,
                magnitude=float(rng.uniform(100, 200)),
                ramp=max(12, int(0.5 * (end - start))),
                cause=cause,
            )
        if kind == "kv_cache_exhaustion":
            g = self.region_pick(self.regions_with([OP_CHAT_LARGE, OP_RAG]))
            tenant, op = self.top_tenant([OP_CHAT_LARGE, OP_RAG], g, top=5)
            nodes = w.llm_nodes[(LLM_INDEX["m-large"], g)]
            pool = w.sources.pools["mooncake_long"]
            spec = LLMS[LLM_INDEX["m-large"]]
            svc = pool.input / spec.prefill_tps + pool.output * spec.tpot_s
            kv_per_req = ((pool.input + pool.output / 2.0) * svc).mean() / 60.0  # token-minutes
            extra_rate = float(rng.uniform(2.0, 3.0)) * w.inst_kv_tokens[nodes].sum() / kv_per_req
            return Incident(
                "",
                kind,
                start,
                end,
                "llm-serving",
                {"tenant": w.tenants[tenant], "region": REGIONS[g], "model": "m-large"},
                ("llm-serving", "gateway"),
                (
                    "vllm:gpu_cache_usage_perc",
                    "vllm:num_preemptions_total",
                    "gen_ai.server.time_to_first_token",
                    "vllm:num_requests_waiting",
                ),
                f"long prompts from {w.tenants[tenant]} exhaust the KV cache of m-large in {REGIONS[g]}",
                region=g,
                tenant=tenant,
                op=op,
                model="m-large",
                magnitude=extra_rate,
                ramp=5,
            )
        if kind == "token_inflation":
            old_tpl, new_tpl = f"rag-v{self.template_no}", f"rag-v{self.template_no + 1}"
            self.template_no += 1
            cause = self.change(
                start - lag,
                "rag-api",
                "config",
                f"rag-api: prompt template {old_tpl} -> {new_tpl}",
                parameter="prompt_template",
                value=new_tpl,
                previous=old_tpl,
            )
            self.change(
                end,
                "rag-api",
                "config",
                f"rag-api: prompt template {new_tpl} -> {old_tpl} (revert)",
                parameter="prompt_template",
                value=old_tpl,
                previous=new_tpl,
            )
            self.templates.append((start, end, new_tpl))
            return Incident(
                "",
                kind,
                start,
                end,
                "rag-api",
                {"operation": "rag", "prompt_template": new_tpl},
                ("rag-api", "llm-serving", "gateway"),
                ("input_tokens", "cost_usd", "gen_ai.server.time_to_first_token"),
                f"prompt template {new_tpl} repeats the retrieved context: rag input tokens and cost up",
                op=OP_RAG,
                magnitude=float(rng.uniform(1.8, 2.4)),
                cause=cause,
            )
        if kind == "prediction_drift":
            cause = self.change(
                start - lag,
                "feature-store",
                "feature_flag",
                "feature-store: enable streaming_aggregates for user_risk_features",
                flag="streaming_aggregates",
                enabled="true",
                feature_view="user_risk_features",
            )
            self.change(
                end,
                "feature-store",
                "feature_flag",
                "feature-store: disable streaming_aggregates for user_risk_features",
                flag="streaming_aggregates",
                enabled="false",
                feature_view="user_risk_features",
            )
            return Incident(
                "",
                kind,
                start,
                end,
                "feature-store",
                {"model": "m-risk", "feature_view": "user_risk_features"},
                ("feature-store", "predictor"),
                ("prediction.score",),
                "changed feature pipeline shifts the m-risk score distribution",
                magnitude=float(rng.uniform(0.8, 1.0)),
                cause=cause,
            )
        if kind == "memory_leak":
            svc_name = str(rng.choice(LEAKY_SERVICES))
            s = SVC[svc_name]
            g = self.region_pick()
            old_ver = self.svc_version[(s, g)]
            new_ver = _bump(old_ver, 1)
            cause = self.change(
                start - lag,
                svc_name,
                "deploy",
                f"Deploy {svc_name} {new_ver} to {REGIONS[g]}",
                version=new_ver,
                previous_version=old_ver,
                region=REGIONS[g],
                commit=_hex(rng, 4)[:7],
            )
            self.deploy(start, s, [g], new_ver, rolling=False)
            self.change(
                end,
                svc_name,
                "deploy",
                f"Roll back {svc_name} to {old_ver} in {REGIONS[g]}",
                version=old_ver,
                previous_version=new_ver,
                region=REGIONS[g],
                commit=_hex(rng, 4)[:7],
            )
            self.deploy(end, s, [g], old_ver, rolling=False)
            for inst in w.service_instances[(s, g)]:
                to_limit = float(rng.uniform(0.3, 0.55) * (end - start))
                self.leaks.append((int(inst), start, end, max(6.0, to_limit)))
            return Incident(
                "",
                kind,
                start,
                end,
                svc_name,
                {"region": REGIONS[g], "service.version": new_ver},
                (svc_name,),
                ("process.memory.usage", "errors"),
                f"{svc_name} {new_ver} leaks memory and is OOM-killed repeatedly",
                region=g,
                cause=cause,
            )
        raise ValueError(kind)

    # ---- routine changes -----------------------------------------------------------------------------------
    def routine_intents(self, blocked: np.ndarray) -> list[tuple[int, str]]:
        """Times and kinds of changes with no incident behind them, outside the blocked minutes."""
        free = np.nonzero(~blocked)[0]
        intents: list[tuple[int, str]] = []
        if free.size == 0:
            return intents
        for kind, per_day in ROUTINE_PER_DAY.items():
            for _ in range(int(self.rng.poisson(per_day * self.n / 1440.0))):
                intents.append((int(free[self.rng.integers(0, free.size)]), kind))
        return sorted(intents)

    def routine(self, minute: int, kind: str, blocked: np.ndarray) -> None:
        w, rng = self.w, self.rng
        if kind == "deploy":
            s = int(
                rng.choice(
                    [
                        SVC[n]
                        for n in (
                            "gateway",
                            "rag-api",
                            "retriever",
                            "embedder",
                            "reranker",
                            "predictor",
                            "feature-store",
                            "llm-serving",
                        )
                    ],
                    p=[0.2, 0.2, 0.1, 0.1, 0.1, 0.12, 0.12, 0.06],
                )
            )
            regions = list(range(len(REGIONS))) if rng.random() < 0.6 else [self.region_pick()]
            old = self.svc_version[(s, regions[0])]
            new = _bump(old, 2)
            where = "all regions" if len(regions) == len(REGIONS) else REGIONS[regions[0]]
            self.change(
                minute,
                SERVICES[s].name,
                "deploy",
                f"Deploy {SERVICES[s].name} {new} to {where}",
                version=new,
                previous_version=old,
                region=where,
                commit=_hex(rng, 4)[:7],
            )
            self.deploy(minute, s, regions, new, rolling=True)
        elif kind == "model_rollout":
            model = str(rng.choice(["m-small", "m-large", "m-embed", "m-risk"]))
            full_at = minute + int(rng.integers(60, 150))
            if full_at >= self.n or blocked[minute : full_at + 1].any() or self.model_busy[model] >= minute:
                return
            self.model_busy[model] = full_at
            old_v = self.model_active[model]
            new_v = self.model_max[model] + 1
            self.model_max[model] = new_v
            self.model_active[model] = new_v
            frac = float(rng.uniform(0.05, 0.2))
            cohort = w.tenant_u < frac
            svc = _model_service(model)
            self.change(
                minute,
                svc,
                "model_rollout",
                f"Roll out {model} v{new_v} to canary cohort",
                model=model,
                model_version=f"v{new_v}",
                previous_version=f"v{old_v}",
                strategy="canary",
                traffic_share=f"{frac:.2f}",
            )
            self.rollouts.append(Rollout(minute, model, f"v{new_v}", cohort))
            self.change(
                full_at,
                svc,
                "model_rollout",
                f"Promote {model} v{new_v} to all tenants",
                model=model,
                model_version=f"v{new_v}",
                previous_version=f"v{old_v}",
                strategy="full",
            )
            self.rollouts.append(Rollout(full_at, model, f"v{new_v}", np.ones(len(w.tenants), dtype=bool)))
        elif kind == "config":
            svc, title, attrs = _routine_config(rng, w)
            self.change(minute, svc, "config", title, **attrs)
        elif kind == "feature_flag":
            flag = str(
                rng.choice(
                    [
                        "response_cache",
                        "streaming_usage_reports",
                        "speculative_decoding",
                        "batch_scoring",
                        "query_rewrite",
                    ]
                )
            )
            svc = {
                "response_cache": "gateway",
                "streaming_usage_reports": "gateway",
                "speculative_decoding": "llm-serving",
                "batch_scoring": "predictor",
                "query_rewrite": "rag-api",
            }[flag]
            on = bool(rng.random() < 0.6)
            pct = str(int(rng.choice([5, 10, 25, 50, 100])))
            self.change(
                minute,
                svc,
                "feature_flag",
                f"{svc}: {'enable' if on else 'disable'} flag {flag}" + (f" for {pct}%" if on else ""),
                flag=flag,
                enabled=str(on).lower(),
                rollout_percent=pct if on else "0",
            )
        elif kind == "scale":
            svc_name = str(rng.choice(["gateway", "rag-api", "retriever", "llm-serving", "predictor"]))
            where = REGIONS[self.region_pick()]
            lo = int(rng.integers(4, 12))
            self.change(
                minute,
                svc_name,
                "scale",
                f"Autoscaler {svc_name} {where}: max replicas {lo} -> {lo + 2}",
                region=where,
                max_replicas=str(lo + 2),
                previous=str(lo),
            )
        elif kind == "infra":
            where = REGIONS[self.region_pick()]
            what = str(
                rng.choice(
                    [
                        "OS security patch on cpu node pool",
                        "Kubernetes 1.31.4 -> 1.31.6",
                        "Load balancer certificate rotation",
                        "CoreDNS config reload",
                    ]
                )
            )
            self.change(
                minute, "gateway" if "Load" in what else "infra", "infra", f"{where}: {what}", region=where
            )


def _model_service(model: str) -> str:
    return {"m-embed": "embedder", "m-risk": "predictor", "m-rerank": "reranker"}.get(model, "llm-serving")


def _routine_config(rng: np.random.Generator, w: World) -> tuple[str, str, dict[str, str]]:
    choice = int(rng.integers(0, 5))
    if choice == 0:
        t = w.tenants[int(rng.integers(0, len(w.tenants)))]
        lim = int(rng.choice([300, 600, 1200, 2400]))
        return "gateway", f"Rate limit for {t} set to {lim} rpm", {"tenant": t, "limit_rpm": str(lim)}
    if choice == 1:
        k = int(rng.integers(6, 12))
        return (
            "rag-api",
            f"rag-api: retrieval top_k {k} -> {k + 2}",
            {"parameter": "top_k", "value": str(k + 2), "previous": str(k)},
        )
    if choice == 2:
        v = int(rng.choice([128, 192, 256]))
        return (
            "llm-serving",
            f"llm-serving: max_num_seqs {v} -> {v + 64}",
            {"parameter": "max_num_seqs", "value": str(v + 64)},
        )
    if choice == 3:
        ttl = int(rng.choice([60, 300, 900]))
        return (
            "feature-store",
            f"feature-store: online cache ttl {ttl}s -> {ttl * 2}s",
            {"parameter": "cache_ttl_s", "value": str(ttl * 2), "previous": str(ttl)},
        )
    th = float(rng.uniform(0.6, 0.9))
    return (
        "predictor",
        f"predictor: decision threshold {th:.2f} -> {th + 0.02:.2f}",
        {"parameter": "threshold", "value": f"{th + 0.02:.2f}", "previous": f"{th:.2f}"},
    )


def build_plan(world: World, n_minutes: int, rng: np.random.Generator) -> Plan:
    """Draw the incidents and changes of one run."""
    b = _Builder(world, n_minutes, rng)
    warmup, slots = b.schedule()
    blocked = np.zeros(n_minutes, dtype=bool)
    for _, start, end in slots:
        blocked[max(0, start - 45) : min(n_minutes, end + 15)] = True
    # replay in time order so service and model versions follow each other
    items = [(start, 0, kind, end) for kind, start, end in slots]
    items += [(minute, 1, kind, 0) for minute, kind in b.routine_intents(blocked)]
    incidents = []
    for minute, is_routine, kind, end in sorted(items):
        if is_routine:
            b.routine(minute, kind, blocked)
        else:
            incidents.append(b.incident(kind, minute, end))

    # ids in time order; incident ids never appear in the telemetry
    b.changes.sort(key=lambda c: (c.minute, c.second, c.service, c.title))
    for i, ch in enumerate(b.changes, start=1):
        ch.id = f"chg-{i:05d}"
    for i, inc in enumerate(incidents, start=1):
        inc.id = f"inc-{i:03d}"
    b.rollouts.sort(key=lambda r: r.minute)
    restarts = sorted(set(b.restarts))
    versions = sorted(b.inst_versions, key=lambda x: (x[0], x[1]))
    return Plan(warmup, incidents, b.changes, b.rollouts, restarts, versions, b.leaks, b.templates)
