"""Files of one run: OTLP JSON, Prometheus text, Parquet, JSONL; every write is recorded for the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from ingest.simulator.engine import Chunk, Engine
from ingest.simulator.flows import NUMBER_METRICS, PROM_FAMILIES, RES_STRIDE, USAGE_METRICS
from ingest.simulator.otlp_json import L, attributes_json, ns, pack, resource_blocks
from ingest.simulator.plan import Plan
from ingest.simulator.world import LLMS, OPERATIONS, REGIONS, SERVICES, TOPOLOGY

NUMBER_META = {
    "requests": ("sum", "{request}", "Requests handled by the instance"),
    "errors": ("sum", "{request}", "Requests that ended in an error"),
    "process.memory.usage": ("gauge", "By", "Resident memory of the service process"),
}
INT_METRICS = ("requests", "errors", "process.memory.usage")
HIST_META = {
    "http.server.request.duration": ("s", "Duration of HTTP server requests"),
    "gen_ai.server.request.duration": ("s", "Generative AI server request duration"),
    "gen_ai.server.time_to_first_token": ("s", "Time to generate first token for successful responses"),
    "gen_ai.server.time_per_output_token": (
        "s",
        "Time per output token generated after the first token for successful responses",
    ),
    "prediction.score": ("1", "Distribution of the scores returned by the model"),
}
PROM_HELP = {
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %)."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_GPU_TEMP": ("gauge", "GPU temperature (in C)."),
    "DCGM_FI_DEV_SM_CLOCK": ("gauge", "SM clock frequency (in MHz)."),
    "vllm:num_requests_running": ("gauge", "Number of requests currently running on GPU."),
    "vllm:num_requests_waiting": ("gauge", "Number of requests waiting to be processed."),
    "vllm:gpu_cache_usage_perc": ("gauge", "GPU KV-cache usage. 1 means 100 percent usage."),
    "vllm:num_preemptions_total": ("counter", "Cumulative number of preemption from the engine."),
    "vllm:prompt_tokens_total": ("counter", "Number of prefill tokens processed."),
    "vllm:generation_tokens_total": ("counter", "Number of generation tokens processed."),
}
FLOAT_FAMILIES = ("vllm:gpu_cache_usage_perc",)
USAGE_ROWS_PER_FILE = 2_000_000
USAGE_UNITS = dict(enumerate(("{request}", "{request}", "{token}", "{token}", "USD", "ms")))


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Writers:
    out: Path
    engine: Engine
    start: datetime
    files: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "metric_points",
                "histogram_points",
                "usage_rows",
                "prometheus_samples",
                "spans",
                "logs",
                "events",
                "edges",
            ),
            0,
        )
    )
    _resources: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = self.engine.w
        self.tele = self.out / "telemetry"
        for sub in ("metrics", "prometheus", "traces", "logs"):
            (self.tele / sub).mkdir(parents=True, exist_ok=True)
        self.route_table = pl.DataFrame(
            {
                "route": np.arange(w.route_rate.size, dtype=np.int32),
                "tenant": np.array(w.tenants)[w.route_tenant],
                "model": np.array([o.model for o in OPERATIONS])[w.route_op],
                "region": np.array(REGIONS)[w.route_region],
                "operation": np.array([o.name for o in OPERATIONS])[w.route_op],
            }
        )
        nodes = np.nonzero(w.inst_model >= 0)[0]
        self.dcgm_labels = {
            int(i): (
                f'{{gpu="0",UUID="{self.engine.gpu_uuid[i]}",modelName="{LLMS[w.inst_model[i]].gpu}",'
                f'instance="{w.inst_host[i]}",job="llm-serving",region="{REGIONS[w.inst_region[i]]}"}}'
            )
            for i in nodes
        }
        self.vllm_labels = {
            int(i): (
                f'{{model_name="{LLMS[w.inst_model[i]].name}",instance="{w.inst_host[i]}",job="llm-serving",'
                f'region="{REGIONS[w.inst_region[i]]}"}}'
            )
            for i in nodes
        }
        self.gen_ai_attrs = {
            int(i): '"attributes":'
            + attributes_json({"gen_ai.request.model": LLMS[w.inst_model[i]].name})
            + ","
            for i in nodes
        }

    # ---- bookkeeping ------------------------------------------------------------------------------------------
    def _write(self, path: Path, data: bytes, fmt: str, records: int) -> None:
        path.write_bytes(data)
        self._record(path, fmt, records)

    def _record(self, path: Path, fmt: str, records: int) -> None:
        self.files.append(
            {
                "path": path.relative_to(self.out).as_posix(),
                "format": fmt,
                "bytes": path.stat().st_size,
                "records": records,
            }
        )

    def label(self, c0: int) -> str:
        return (self.start + timedelta(minutes=c0)).strftime("%Y%m%dT%H%M")

    def resources(self, keys: np.ndarray) -> pl.DataFrame:
        """Rendered OTLP resource per key (instance x service version)."""
        w, eng = self.engine.w, self.engine
        uniq = np.unique(keys)
        for k in uniq.tolist():
            if k not in self._resources:
                inst, ver = divmod(k, RES_STRIDE)
                attrs = {
                    "service.name": SERVICES[w.inst_service[inst]].name,
                    "service.namespace": "ml-platform",
                    "service.version": eng.service_versions[ver],
                    "service.instance.id": w.inst_name[inst],
                    "host.name": w.inst_host[inst],
                    "cloud.region": REGIONS[w.inst_region[inst]],
                    "deployment.environment.name": "production",
                }
                self._resources[k] = '{"attributes":' + attributes_json(attrs) + "}"
        return pl.DataFrame(
            {"res": uniq.astype(np.int64), "resource": [self._resources[k] for k in uniq.tolist()]}
        )

    # ---- per chunk --------------------------------------------------------------------------------------------
    def metrics(self, ch: Chunk) -> None:
        frames = []
        num = ch.numbers.with_columns(res=pl.col("inst").cast(pl.Int64) * RES_STRIDE + pl.col("sver"))
        is_int = pl.col("metric").is_in([NUMBER_METRICS.index(m) for m in INT_METRICS])
        is_sum = pl.col("metric").is_in(
            [i for i, m in enumerate(NUMBER_METRICS) if NUMBER_META[m][0] == "sum"]
        )
        value = (
            pl.when(is_int)
            .then(pl.concat_str([L('"asInt":"'), ns(pl.col("value")), L('"')]))
            .otherwise(pl.concat_str([L('"asDouble":'), pl.col("value").cast(pl.Utf8)]))
        )
        start = pl.when(is_sum).then(
            pl.concat_str([L('"startTimeUnixNano":"'), ns(pl.col("start_ns")), L('",')])
        )
        dp = pl.concat_str(
            [
                L("{"),
                start.otherwise(L("")),
                L('"timeUnixNano":"'),
                ns(pl.col("time_ns")),
                L('",'),
                value,
                L("}"),
            ]
        )
        grouped = (
            num.select("res", "metric", dp.alias("dp"))
            .group_by(["res", "metric"], maintain_order=True)
            .agg(pl.col("dp").str.join(","))
        )
        heads, tails = {}, {}
        for i, m in enumerate(NUMBER_METRICS):
            kind, unit, desc = NUMBER_META[m]
            heads[i] = f'{{"name":"{m}","description":"{desc}","unit":"{unit}","{kind}":{{"dataPoints":['
            tails[i] = '],"aggregationTemporality":2,"isMonotonic":true}}' if kind == "sum" else "]}}"
        frames.append(
            grouped.select(
                "res",
                pl.col("metric").cast(pl.Int32).alias("order"),
                pl.concat_str(
                    [
                        pl.col("metric").replace_strict(heads, return_dtype=pl.Utf8),
                        pl.col("dp"),
                        pl.col("metric").replace_strict(tails, return_dtype=pl.Utf8),
                    ]
                ).alias("json"),
            )
        )
        n_points = num.height
        n_hist = 0
        for j, (metric, bounds, frame, counts) in enumerate(ch.histograms):
            if frame.height == 0:
                continue
            n_hist += frame.height
            nb = counts.shape[1]
            cdf = pl.DataFrame({f"b{i}": counts[:, i] for i in range(nb)})
            frame = pl.concat([frame, cdf], how="horizontal").with_columns(
                res=pl.col("inst").cast(pl.Int64) * RES_STRIDE + pl.col("sver")
            )
            buckets = pl.concat_str([pl.col(f"b{i}").cast(pl.Utf8) for i in range(nb)], separator='","')
            if metric.startswith("gen_ai.server"):
                attrs = pl.col("inst").replace_strict(self.gen_ai_attrs, default="", return_dtype=pl.Utf8)
            elif metric == "prediction.score":
                table = {
                    v + 1: '"attributes":' + attributes_json({"model": "m-risk", "model_version": name}) + ","
                    for v, name in enumerate(self.engine.versions)
                }
                attrs = pl.col("attrs").replace_strict(table, default="", return_dtype=pl.Utf8)
            else:
                attrs = L("")
            bounds_json = orjson.dumps([float(b) for b in bounds]).decode()
            dp = pl.concat_str(
                [
                    L("{"),
                    attrs,
                    L('"startTimeUnixNano":"'),
                    ns(pl.col("start_ns")),
                    L('","timeUnixNano":"'),
                    ns(pl.col("time_ns")),
                    L('","count":"'),
                    ns(pl.col("count")),
                    L('","sum":'),
                    pl.col("sum").cast(pl.Float64).cast(pl.Utf8),
                    L(',"bucketCounts":["'),
                    buckets,
                    L(f'"],"explicitBounds":{bounds_json}}}'),
                ]
            )
            unit, desc = HIST_META[metric]
            head = f'{{"name":"{metric}","description":"{desc}","unit":"{unit}","histogram":{{"dataPoints":['
            g = (
                frame.select("res", dp.alias("dp"))
                .group_by("res", maintain_order=True)
                .agg(pl.col("dp").str.join(","))
            )
            frames.append(
                g.select(
                    "res",
                    pl.lit(10 + j, dtype=pl.Int32).alias("order"),
                    pl.concat_str([L(head), pl.col("dp"), L('],"aggregationTemporality":2}}')]).alias("json"),
                )
            )
        allm = pl.concat(frames).sort(["res", "order"])
        blocks = resource_blocks(
            allm, self.resources(allm["res"].to_numpy()), "json", "scopeMetrics", "metrics"
        )
        files = pack(blocks, '{"resourceMetrics":[', "]}")
        for k, data in enumerate(files):
            suffix = "" if len(files) == 1 else f"_{k + 1}"
            self._write(
                self.tele / "metrics" / f"otlp_metrics_{self.label(ch.c0)}{suffix}.json",
                data,
                "otlp-json-metrics",
                0,
            )
        self.files[-1]["records"] = n_points + n_hist  # counted once per chunk
        self.counts["metric_points"] += n_points
        self.counts["histogram_points"] += n_hist

    def usage(self, ch: Chunk) -> None:
        """Per-tenant usage in the long format ``ts, metric, value, service, kind, unit, <labels>``."""
        versions = dict(enumerate(self.engine.versions))
        df = ch.usage
        for k, start in enumerate(range(0, max(df.height, 1), USAGE_ROWS_PER_FILE)):
            part = df.slice(start, USAGE_ROWS_PER_FILE).join(
                self.route_table, on="route", how="left", maintain_order="left"
            )
            part = part.select(
                pl.from_epoch("ts", time_unit="us").dt.replace_time_zone("UTC").alias("ts"),
                pl.col("metric").replace_strict(dict(enumerate(USAGE_METRICS)), return_dtype=pl.Utf8),
                pl.col("value"),
                pl.lit("gateway").alias("service"),
                pl.lit("delta").alias("kind"),  # per-minute increments
                pl.col("metric").replace_strict(USAGE_UNITS, return_dtype=pl.Utf8).alias("unit"),
                "tenant",
                "model",
                pl.col("version").replace_strict(versions, return_dtype=pl.Utf8).alias("model_version"),
                "region",
                "operation",
            )
            suffix = "" if df.height <= USAGE_ROWS_PER_FILE else f"_{k + 1}"
            path = self.tele / "metrics" / f"tenant_usage_{self.label(ch.c0)}{suffix}.parquet"
            part.write_parquet(path, compression="zstd", statistics=True)
            self._record(path, "parquet-long", part.height)
        self.counts["usage_rows"] += df.height

    def prometheus(self, ch: Chunk) -> None:
        df = ch.prom
        is_dcgm = pl.col("family").is_in([i for i, f in enumerate(PROM_FAMILIES) if f.startswith("DCGM")])
        label = (
            pl.when(is_dcgm)
            .then(pl.col("inst").replace_strict(self.dcgm_labels, return_dtype=pl.Utf8))
            .otherwise(pl.col("inst").replace_strict(self.vllm_labels, return_dtype=pl.Utf8))
        )
        floats = pl.col("family").is_in([PROM_FAMILIES.index(f) for f in FLOAT_FAMILIES])
        value = pl.when(floats).then(pl.col("value").cast(pl.Utf8)).otherwise(ns(pl.col("value")))
        line = pl.concat_str(
            [
                pl.col("family").replace_strict(dict(enumerate(PROM_FAMILIES)), return_dtype=pl.Utf8),
                label,
                L(" "),
                value,
                L(" "),
                pl.col("ts_ms").cast(pl.Utf8),
            ]
        )
        lines = (
            df.sort(["family", "ts_ms", "inst"])
            .select("family", line.alias("line"))
            .group_by("family", maintain_order=True)
            .agg(pl.col("line").str.join("\n"))
        )
        parts = []
        for fam, text in lines.iter_rows():
            name = PROM_FAMILIES[fam]
            kind, help_ = PROM_HELP[name]
            parts.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n{text}\n")
        path = self.tele / "prometheus" / f"gpu_nodes_{self.label(ch.c0)}.prom"
        self._write(path, "".join(parts).encode(), "prometheus-text", df.height)
        self.counts["prometheus_samples"] += df.height

    def otlp_items(self, ch: Chunk, frame: pl.DataFrame, signal: str) -> None:
        if frame.height == 0:
            return
        scope_key, items_key, top = {
            "traces": ("scopeSpans", "spans", "resourceSpans"),
            "logs": ("scopeLogs", "logRecords", "resourceLogs"),
        }[signal]
        blocks = resource_blocks(frame, self.resources(frame["res"].to_numpy()), "json", scope_key, items_key)
        files = pack(blocks, f'{{"{top}":[', "]}")
        for k, data in enumerate(files):
            suffix = "" if len(files) == 1 else f"_{k + 1}"
            self._write(
                self.tele / signal / f"otlp_{signal}_{self.label(ch.c0)}{suffix}.json",
                data,
                f"otlp-json-{signal}",
                0,
            )
        self.files[-1]["records"] = frame.height
        self.counts["spans" if signal == "traces" else "logs"] += frame.height

    # ---- once per run -----------------------------------------------------------------------------------------
    def events(self, plan: Plan) -> None:
        lines = []
        for ch in plan.changes:
            ts = self.start + timedelta(minutes=ch.minute, seconds=ch.second)
            lines.append(
                orjson.dumps(
                    {
                        "id": ch.id,
                        "ts": rfc3339(ts),
                        "service": ch.service,
                        "kind": ch.kind,
                        "title": ch.title,
                        "attributes": ch.attributes,
                    }
                )
            )
        self._write(
            self.tele / "events.jsonl",
            b"\n".join(lines) + (b"\n" if lines else b""),
            "events-jsonl",
            len(lines),
        )
        self.counts["events"] = len(lines)

    def topology(self) -> None:
        lines = [orjson.dumps({"source": a, "target": b}) for a, b in TOPOLOGY]
        self._write(self.tele / "topology.jsonl", b"\n".join(lines) + b"\n", "topology-jsonl", len(lines))
        self.counts["edges"] = len(lines)

    def labels(self, plan: Plan, header: dict) -> None:
        incidents = []
        for inc in plan.incidents:
            incidents.append(
                {
                    "id": inc.id,
                    "kind": inc.kind,
                    "start": rfc3339(self.start + timedelta(minutes=inc.start)),
                    "end": rfc3339(self.start + timedelta(minutes=inc.end)),
                    "root_cause": {"service": inc.service, "labels": inc.labels},
                    "affected_services": list(inc.affected_services),
                    "affected_metrics": list(inc.affected_metrics),
                    "event_id": inc.event_id,
                    "description": inc.description,
                }
            )
        path = self.out / "labels" / "incidents.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            **header,
            "warmup_end": rfc3339(self.start + timedelta(minutes=plan.warmup)),
            "incidents": incidents,
        }
        self._write(
            path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n", "labels-json", len(incidents)
        )
