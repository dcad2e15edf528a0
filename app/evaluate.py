"""``rootwise eval``: the evaluations whose figures go into closing notes, each printing and writing JSON.

* ``eval nab`` — a registered detector over the Numenta Anomaly Benchmark, scored with the exact NAB v1.1
  scorer (:mod:`detectors.nab`): the three profiles, per category, event-level metrics; ``--loco`` adds the
  leave-one-category-out check of any parameter grid tuned on NAB.
* ``eval incidents`` — the whole pipeline on simulated telemetry with injected incidents: simulate, ingest,
  ``rootwise detect``, then compare the incidents with the ground truth (kept outside the store; read only
  after detection has finished).

Detection never sees labels: the detector gets the values and timestamps of each file (NAB) or the store
(simulator); labels are loaded by the scoring step only.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ingest.procs import exit_with_parent

NAB_PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


# -- NAB -------------------------------------------------------------------------------------------------
def _score_nab_file(job: tuple[str, dict[str, Any], str, np.ndarray]) -> tuple[str, np.ndarray]:
    """Worker: causal scores of one NAB file (values only; a synthetic 1-minute clock keeps row order)."""
    from detectors.registry import make_detector

    name, params, path, values = job
    n = values.size
    ts = np.arange(n).astype("datetime64[m]").astype("datetime64[us]")
    frame = pl.DataFrame({"series_id": np.zeros(n, np.int64), "ts": ts, "value": values})
    return path, make_detector(name, **params).score_online(frame)["score"].to_numpy()


def nab_scores(
    root: Path,
    detector: str,
    params: Mapping[str, Any] | None = None,
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """Calibrated z scores of every NAB file, and the seconds it took (scoring only)."""
    from detectors.nab import load_corpus

    corpus = load_corpus(root)
    jobs = [(detector, dict(params or {}), p, f.values) for p, f in corpus.files.items()]
    started = time.perf_counter()
    out: dict[str, np.ndarray] = {}
    if workers <= 1:
        for i, job in enumerate(jobs, 1):
            k, v = _score_nab_file(job)
            out[k] = v
            if progress:
                progress(i, len(jobs))
    else:
        # spawn: polars' thread pool does not survive fork
        # and like every pool of ours, its workers exit when this process is killed
        with ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=exit_with_parent, initargs=(os.getpid(),)
        ) as ex:
            for i, (k, v) in enumerate(ex.map(_score_nab_file, jobs), 1):
                out[k] = v
                if progress:
                    progress(i, len(jobs))
    return out, time.perf_counter() - started


def to_nab_scale(z: np.ndarray) -> np.ndarray:
    """Calibrated z → NAB's [0, 1] anomaly score (monotone, so the threshold sweep is unchanged)."""
    from detectors.calibration import Z_MAX

    return np.clip(np.nan_to_num(z, nan=0.0) / Z_MAX, 0.0, 1.0)


def eval_nab(
    root: Path,
    detector: str = "streaming",
    params: Mapping[str, Any] | None = None,
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """NAB figures of one detector: score per profile, per category, threshold, event metrics, speed."""
    from detectors.calibration import Z_MAX
    from detectors.nab import event_metrics, load_corpus, load_profiles, score_corpus

    corpus = load_corpus(root)
    profiles = load_profiles(root)
    z, seconds = nab_scores(root, detector, params, workers=workers, progress=progress)
    scores = {k: to_nab_scale(v) for k, v in z.items()}
    result = score_corpus(corpus, scores, profiles)
    out: dict[str, Any] = {"detector": detector, "params": dict(params or {}), "profiles": {}}
    for name in NAB_PROFILES:
        r = result[name]
        out["profiles"][name] = {
            "score": round(r.score, 3),
            "threshold_z": round(r.threshold * Z_MAX, 3),  # the inverse of to_nab_scale
            "detected_windows": r.detected_windows,
            "windows": r.windows,
            "categories": {
                row["category"]: round(row["score"], 2) for row in r.categories.iter_rows(named=True)
            },
        }
    std = result["standard"]
    ev = event_metrics(corpus, {k: v >= std.threshold for k, v in scores.items()})
    out["events_at_standard_threshold"] = {
        k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(ev).items()
    }
    points = sum(f.n_rows for f in corpus.files.values())
    out["points"] = points
    out["seconds"] = round(seconds, 2)
    out["points_per_second"] = round(points / seconds) if seconds else None
    return out


def eval_nab_loco(
    root: Path, detector: str, grid: Mapping[str, list[Any]], *, workers: int = 2, profile: str = "standard"
) -> dict[str, Any]:
    """Leave-one-category-out check of tuning on NAB.

    For each category: choose the grid point with the best ``profile`` score on the *other* categories
    (threshold swept on them too), then score the held-out category at that choice and threshold. The
    held-out raw scores are pooled and normalised over the whole corpus, so the figure is comparable with
    the headline (which tunes on everything).
    """
    import itertools

    from detectors.nab import load_corpus, load_profiles, score_corpus

    corpus = load_corpus(root)
    profiles = load_profiles(root)
    keys = list(grid)
    combos = [dict(zip(keys, c, strict=True)) for c in itertools.product(*[grid[k] for k in keys])]
    runs = []
    for params in combos:
        z, _ = nab_scores(root, detector, params, workers=workers)
        runs.append((params, {k: to_nab_scale(v) for k, v in z.items()}))
    cats = corpus.categories
    raw = null = perfect = 0.0
    chosen = {}
    for cat in cats:
        train = corpus.select([p for p in corpus.files if not p.startswith(cat + "/")])
        test = corpus.select([p for p in corpus.files if p.startswith(cat + "/")])
        best = max(
            runs,
            key=lambda r: score_corpus(train, {p: r[1][p] for p in train.files}, profiles)[profile].score,
        )
        thr = score_corpus(train, {p: best[1][p] for p in train.files}, profiles)[profile].threshold
        held = score_corpus(test, {p: best[1][p] for p in test.files}, profiles, threshold=thr)[profile]
        raw, null, perfect = raw + held.raw, null + held.null, perfect + held.perfect
        chosen[cat] = {"params": best[0], "held_out_score": round(held.score, 2)}
    # by score only: grid points that score the same (a weight of an absent channel) have dicts, not an order
    headline = max(
        ((score_corpus(corpus, r[1], profiles)[profile].score, r[0]) for r in runs), key=lambda x: x[0]
    )
    return {
        "profile": profile,
        "loco_score": round(100 * (raw - null) / (perfect - null), 3),
        "headline_score": round(headline[0], 3),
        "headline_params": headline[1],
        "per_category": chosen,
        "grid": {k: list(v) for k, v in grid.items()},
    }


# -- simulator incidents ----------------------------------------------------------------------------------
def _parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def match_incidents(
    labels: list[dict[str, Any]],
    detected: list[dict[str, Any]],
    *,
    evaluate_from: datetime,
    grace: timedelta = timedelta(minutes=30),
    pages_only: bool = True,
) -> dict[str, Any]:
    """Event-level precision/recall of detected incidents against labelled ones.

    An alarm is one series' alarm episode; a detected incident pages for all its alarms. A labelled incident
    is detected when an alarm of a detected incident starts inside ``[start - 5 min, end + grace]`` (alarm
    starts come from ``alarm_starts``, else the incident's start); a detected incident none of whose alarms
    starts inside any labelled window is a false alarm. Only incidents
    starting at or after ``evaluate_from`` (the detectors' warm-up is excluded, like NAB's probation) count;
    with ``pages_only`` only ``severity == "page"`` incidents are alarms (tickets do not wake anyone).
    """
    lab = [
        (_parse_utc(x["start"]), _parse_utc(x["end"]), x)
        for x in labels
        if _parse_utc(x["start"]) >= evaluate_from
    ]
    det = [
        d
        for d in detected
        if datetime.fromisoformat(d["start"]) >= evaluate_from and (not pages_only or d["severity"] == "page")
    ]
    hit_delay: dict[int, float] = {}
    page_delay: dict[int, float] = {}  # labelled start to the first page of an incident that found it
    matched: dict[int, list[dict[str, Any]]] = {}
    false = []
    for d in det:
        starts = [datetime.fromisoformat(x) for x in d.get("alarm_starts") or [d["start"]]]
        inside = [
            (i, s)
            for s in starts
            for i, (a, b, _) in enumerate(lab)
            if a - timedelta(minutes=5) <= s <= b + grace
        ]
        if not inside:
            false.append(d)
        for i, s in inside:
            delay = (s - lab[i][0]).total_seconds() / 60
            hit_delay[i] = min(hit_delay.get(i, delay), delay)
            if d.get("paged_at"):
                paged = (datetime.fromisoformat(d["paged_at"]) - lab[i][0]).total_seconds() / 60
                page_delay[i] = min(page_delay.get(i, paged), paged)
            if d not in matched.setdefault(i, []):
                matched[i].append(d)
    tp_alarms = len(det) - len(false)
    missed = [lab[i][2]["kind"] + "@" + lab[i][2]["start"] for i in range(len(lab)) if i not in hit_delay]
    return {
        "labelled": len(lab),
        "detected": len(hit_delay),
        "recall": round(len(hit_delay) / len(lab), 4) if lab else None,
        "alarms": len(det),
        "false_alarms": len(false),
        "precision": round(tp_alarms / len(det), 4) if det else None,
        "mean_time_to_detect_min": round(float(np.mean(list(hit_delay.values()))), 2) if hit_delay else None,
        # from the labelled start to the page (detected incidents with ``paged_at``: see :func:`page_time`)
        **_delays("time_to_page", list(page_delay.values())),
        "missed": missed,
        # per labelled incident found: minutes from its start to the first alarm, and to the page (None: no page)
        "delays": {
            lab[i][2]["kind"] + "@" + lab[i][2]["start"]: [round(hit_delay[i], 1), _round(page_delay.get(i))]
            for i in sorted(hit_delay)
        },
        # what woke someone for nothing: service, the incident's top metric, start, peak z
        "false": [
            f"{d['service']}/{d['metric']}@{d['start']} (z {float(d.get('peak') or 0):.1f})" for d in false
        ],
        "by_kind": _by_kind(lab, hit_delay),
        **_recovery(lab, matched),
    }


def page_time(store: Any, incident_id: str, alarm_starts: list[datetime], policy: Any) -> datetime | None:
    """When the stored incident ``incident_id`` first met the page rule of :mod:`detectors.incidents` (an
    alarm's score reaching ``policy.page_z``, or ``policy.page_series`` series alarming), reconstructed from
    its series' alarm points in ``anomalies`` and their alarms' starts (``alarm_starts``, as the caller read
    them from ``incident_series``): an incident opens as a ticket at its first alarm and is paged later when
    it grows. None when it never met the rule (a page kept from before, or no stored points)."""
    cur = store.cursor()
    cur.complete()
    hot = cur.execute(
        "SELECT min(a.ts) FROM incident_series s JOIN anomalies a ON a.series_id = s.series_id "
        "AND a.ts BETWEEN s.start AND s.last WHERE s.incident_id = $id AND a.is_anomaly AND a.score >= $z",
        {"id": incident_id, "z": policy.page_z},
    ).fetchone()[0]
    starts = sorted(alarm_starts)
    wide = starts[policy.page_series - 1] if len(starts) >= policy.page_series else None
    times = [t for t in (hot, wide) if t is not None]
    return min(times) if times else None


def _recovery(
    lab: list[tuple[datetime, datetime, dict[str, Any]]], matched: dict[int, list[dict[str, Any]]]
) -> dict[str, Any]:
    """How long after a detected incident's labelled end its alarms went on: per labelled incident, the last
    anomalous point (``end``) of the detected incidents that found it, minus the labelled end, in minutes (the
    incident resolves ``resolve_after`` quiet points later). Negative when the alarms stopped before the labelled
    end (a leak's OOM kill ends the symptom). Labelled incidents whose incident was still open when the data
    ended are counted apart (``still_open``), not in the lags."""
    lags, still_open = [], 0
    for i, found in sorted(matched.items()):
        if any(d["status"] != "resolved" for d in found):
            still_open += 1
            continue
        end = max(datetime.fromisoformat(d["end"]) for d in found)
        lags.append((end - lab[i][1]).total_seconds() / 60)
    return {
        "recovery_lag_median_min": round(float(np.median(lags)), 1) if lags else None,
        "recovery_lag_p90_min": round(float(np.quantile(lags, 0.9)), 1) if lags else None,
        "still_open": still_open,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _delays(name: str, minutes: list[float]) -> dict[str, Any]:
    if not minutes:
        return {f"mean_{name}_min": None, f"median_{name}_min": None, f"max_{name}_min": None}
    return {
        f"mean_{name}_min": round(float(np.mean(minutes)), 2),
        f"median_{name}_min": round(float(np.median(minutes)), 2),
        f"max_{name}_min": round(float(np.max(minutes)), 2),
    }


def _by_kind(lab: list[tuple[datetime, datetime, dict[str, Any]]], hit: dict[int, float]) -> dict[str, str]:
    kinds: dict[str, list[int]] = {}
    for i, (_, _, x) in enumerate(lab):
        kinds.setdefault(x["kind"], []).append(i)
    return {k: f"{sum(i in hit for i in v)}/{len(v)}" for k, v in sorted(kinds.items())}


def eval_incidents(
    *,
    days: float = 4.0,
    seed: int = 1,
    scale: float = 0.5,
    data: Path | None = None,
    workdir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Simulate (or reuse ``data``), ingest, detect, then score incidents against the labels."""
    from app.detect import DetectConfig, run_detection
    from ingest.files import ingest_paths
    from ingest.results import incident_series, list_incidents
    from ingest.simulator import simulate
    from ingest.store import Store

    tmp = tempfile.TemporaryDirectory(prefix="rootwise-eval-") if workdir is None else None
    work = Path(tmp.name) if tmp else Path(workdir)  # type: ignore[union-attr]
    try:
        t0 = time.perf_counter()
        if data is None:
            data = work / "sim"
            simulate(data, days=days, seed=seed, scale=scale, progress=progress)
        manifest = json.loads((data / "manifest.json").read_text())
        store = Store(work / "eval.duckdb")
        ingest_paths(store, [data / "telemetry"], progress=progress)
        t1 = time.perf_counter()
        report = run_detection(store)
        t2 = time.perf_counter()
        detected = list_incidents(store)
        policy = DetectConfig().policy
        for d in detected:
            starts = incident_series(store, d["id"])["start"].to_list()
            d["alarm_starts"] = [t.isoformat() for t in starts]
            if d["severity"] == "page":
                paged = page_time(store, d["id"], starts, policy)
                d["paged_at"] = paged.isoformat() if paged else None
        n_series = report.series
        store.close()
        # labels are read only now, after detection has finished
        truth = json.loads((data / "labels" / "incidents.json").read_text())
        labels = truth["incidents"]
        # the simulator's warm-up (no injected incidents) is also the detectors' learning period: excluded
        evaluate_from = _parse_utc(truth["warmup_end"])
        end = _parse_utc(manifest["end"])
        pages = match_incidents(labels, detected, evaluate_from=evaluate_from)
        everything = match_incidents(labels, detected, evaluate_from=evaluate_from, pages_only=False)
        weeks = (end - evaluate_from).total_seconds() / (7 * 86400)
        return {
            "days": days,
            "seed": seed,
            "scale": scale,
            "series_scored": n_series,
            "pages": pages,
            "all_incidents": everything,
            "false_pages_per_series_week": round(pages["false_alarms"] / (n_series * weeks), 5)
            if weeks > 0
            else None,
            "detect": report.to_dict(),
            "seconds": {"simulate_ingest": round(t1 - t0, 1), "detect": round(t2 - t1, 1)},
        }
    finally:
        if tmp:
            tmp.cleanup()
