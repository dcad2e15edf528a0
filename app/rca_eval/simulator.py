"""RCA on the simulator's incidents, end to end: simulate → ingest → detect → explain each detected incident.

The engine sees only the store (through :class:`ingest.rca_view.StoreView`) and the detected incident; the
labels file is read after every incident has been explained. Every detected incident is explained at each of
its alarm episodes (:func:`alarm_episodes`: an incident that gains new alarms hours after it opened is
explained again there, as a responder re-runs RCA), without looking at the labels. A labelled incident counts
as *detected* when an episode starts in ``[start − 5 min, end + 30 min]`` (as in ``rootwise eval
incidents``); its RCA is that of the earliest such episode, the page an on-call engineer opens first.

A ranked candidate is **correct** when it names the root cause: the causing change event (``event_id``), the
root-cause service (``service``, ``metric`` or ``log`` candidates), or a dimension that shares a label pair
with the root-cause labels and contradicts none (``tenant=t-0009, operation=rag`` for a tenant whose long
prompts exhaust the KV cache; not ``tenant=t-0001``). AC@k is over detected incidents;
``detected`` gives the share detected. For change-caused incidents ``change_first`` is the share whose top
candidate is the causing event.
"""

from __future__ import annotations

import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.rca_eval import CaseOutcome, summarise
from rca.base import Candidate


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).replace(tzinfo=None)


def is_root_cause(c: dict[str, Any] | Candidate, truth: dict[str, Any]) -> bool:
    """Does a ranked cause (``rootwise rca`` JSON or a :class:`Candidate`) name the labelled root cause?

    Examples
    --------
    >>> truth = {"event_id": None, "root_cause": {"service": "llm-serving", "labels": {"tenant": "t-9", "region": "eu"}}}
    >>> is_root_cause({"kind": "dimension", "labels": {"tenant": "t-9"}, "service": "gateway"}, truth)
    True
    >>> is_root_cause({"kind": "dimension", "labels": {"tenant": "t-9", "operation": "rag"}, "service": "gateway"}, truth)
    True
    >>> is_root_cause({"kind": "dimension", "labels": {"tenant": "t-1"}, "service": "gateway"}, truth)
    False
    >>> is_root_cause({"kind": "service", "labels": {}, "service": "llm-serving"}, truth)
    True
    """
    if isinstance(c, Candidate):
        c = {"kind": c.kind, "service": c.service, "labels": c.labels, "event_id": c.event_id}
    root = truth["root_cause"]
    if c["kind"] == "change":
        return truth.get("event_id") is not None and c.get("event_id") == truth["event_id"]
    if c["kind"] == "dimension":
        labels = c.get("labels") or {}
        agree = [k for k, v in labels.items() if root["labels"].get(k) == v]
        conflict = [k for k, v in labels.items() if k in root["labels"] and root["labels"][k] != v]
        return bool(agree) and not conflict
    return c.get("service") == root["service"]


def alarm_episodes(series: Any, gap: timedelta = timedelta(minutes=30)) -> list[tuple[datetime, str]]:
    """Onsets of an incident's alarm episodes: its series' alarm starts, a new episode when an alarm starts more
    than ``gap`` after the current episode's first one (a long incident that gains new alarms hours later is
    explained again at that point, as a responder would re-run RCA); each with the metric of its first alarm.

    Examples
    --------
    >>> import polars as pl
    >>> t = datetime(2026, 1, 1)
    >>> s = pl.DataFrame({"start": [t, t + timedelta(minutes=5), t + timedelta(hours=2)], "metric": ["a", "b", "c"]})
    >>> [(o.hour, m) for o, m in alarm_episodes(s)]
    [(0, 'a'), (2, 'c')]
    """
    out: list[tuple[datetime, str]] = []
    for start, metric in sorted(zip(series["start"].to_list(), series["metric"].to_list(), strict=True)):
        if not out or start - out[-1][0] > gap:
            out.append((start, metric))
    return out


def _explain_run(data: Path, work: Path, progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ingest and detect one simulated run; explain every detected incident. Labels are not read here."""
    from app.detect import run_detection
    from ingest.files import ingest_paths
    from ingest.rca_view import StoreView
    from ingest.results import incident_series, list_incidents
    from ingest.store import Store
    from rca.combine import RootCauseEngine, incident_from_record

    store = Store(work / "rca-eval.duckdb")
    try:
        ingest_paths(store, [data / "telemetry"], progress=progress)
        run_detection(store)
        detected = list_incidents(store)
        view = StoreView(store)
        for d in detected:
            d["episodes"] = []
            for onset, metric in alarm_episodes(incident_series(store, d["id"])):
                engine = RootCauseEngine()
                t0 = time.perf_counter()
                result = engine.explain(incident_from_record(d, onset=onset, metric=metric), view)
                d["episodes"].append(
                    {
                        "onset": onset,
                        "metric": metric,
                        "rca": result.to_json(),
                        "seconds": time.perf_counter() - t0,
                    }
                )
    finally:
        store.close()
    return detected, json.loads((data / "manifest.json").read_text())


def eval_simulator(
    *, seeds: tuple[int, ...] = (1, 2, 3), days: float = 3.0, scale: float = 0.5, progress: bool = False
) -> dict[str, Any]:
    """Simulate each seed, detect and explain; score the explanations of detected incidents by kind."""
    from ingest.simulator import simulate

    outcomes: list[CaseOutcome] = []
    labelled = detected_n = change_cases = change_first = 0
    misses: list[dict[str, Any]] = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="rootwise-rca-eval-") as tmp:
            work = Path(tmp)
            simulate(work / "sim", days=days, seed=seed, scale=scale, progress=progress)
            detected, _ = _explain_run(work / "sim", work, progress)
            # the ground truth is read only now, after every incident has been explained
            truth = json.loads((work / "sim" / "labels" / "incidents.json").read_text())
        warm = _utc(truth["warmup_end"])
        for lab in truth["incidents"]:
            start, end = _utc(lab["start"]), _utc(lab["end"])
            if start < warm:
                continue
            labelled += 1
            lo, hi = start - timedelta(minutes=5), end + timedelta(minutes=30)
            hits = [
                (e["onset"], d["id"], e) for d in detected for e in d["episodes"] if lo <= e["onset"] <= hi
            ]
            if not hits:
                continue
            detected_n += 1
            episode = min(hits, key=lambda h: (h[0], h[1]))[2]
            causes = episode["rca"]["causes"]
            ranked = tuple(
                "root" if is_root_cause(c, lab) else f"{c['kind']}:{c.get('service')}" for c in causes
            )
            outcomes.append(
                CaseOutcome(
                    case=f"seed{seed}/{lab['id']}",
                    system="simulator",
                    fault_type=lab["kind"],
                    truth="root",
                    ranked=ranked,
                    seconds=episode["seconds"],
                )
            )
            if lab.get("event_id"):
                change_cases += 1
                change_first += bool(causes) and causes[0].get("event_id") == lab["event_id"]
            if not ranked or ranked[0] != "root":
                misses.append(
                    {
                        "case": f"seed{seed}/{lab['id']}",
                        "kind": lab["kind"],
                        "truth": {
                            "service": lab["root_cause"]["service"],
                            "labels": lab["root_cause"]["labels"],
                            "event_id": lab.get("event_id"),
                        },
                        "incident": {"metric": episode["metric"], "onset": episode["onset"].isoformat()},
                        "top": [
                            {
                                k: c.get(k)
                                for k in ("kind", "service", "metric", "labels", "event_id", "score")
                            }
                            for c in causes[:3]
                        ],
                    }
                )
    return {
        "seeds": list(seeds),
        "days": days,
        "scale": scale,
        "summary": summarise(outcomes),
        "detected": f"{detected_n}/{labelled}",
        "change_first": f"{change_first}/{change_cases}"
        + (f" = {change_first / change_cases:.2f}" if change_cases else ""),
        "misses": misses,
    }
