"""A root-cause candidate's evidence in words: the keys the analysers of ``rca/`` write, as labels with units.

The engine stores each cause's evidence as a JSON dict whose keys are the analysers' own names
(``minutes_before_onset``, ``kpi_expected``, ``p_value``, ...). The incident page and its postmortem export show
them through :func:`evidence_rows`: one entry of :data:`LABELS` per known key says what it is and how its value
reads (a UTC time, minutes before the onset, a share, a factor, a count with its unit, a metric value with the
metric's unit); a key no entry knows yet is still shown, its name humanised (``onset_lead_s`` → "Onset lead
(s)"). Keys that look like credentials are masked whatever they are.

Values are telemetry and stay text: the page renders them as text, the postmortem escapes them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

#: the value of a key, given the whole evidence (for companions such as ``exposure_unit``) and the metric's unit
Show = Callable[[Any, Mapping[str, Any], "str | None"], str]

SECRET_KEY = re.compile(r"secret|token|passw|api[_-]?key|authori[sz]ation|credential|cookie", re.I)
_UNIT_SUFFIXES = {"s": "s", "ms": "ms", "us": "µs", "ns": "ns", "min": "min", "pct": "%", "bytes": "bytes"}
_DIRECTIONS = {
    "self": "on the incident's own service",
    "downstream": "downstream: called by the incident's service",
    "upstream": "upstream: calls the incident's service",
    "unrelated": "no known call path to the incident's service",
}
_STATUSES = {
    "anomalous": "anomalous",
    "explained": "anomalous, explained by a dependency",
    "healthy": "healthy: none of its signals moved",
}
_SPREADS = {
    "iqr": "the baseline's interquartile range",
    "relative_floor": "1% of its level (the baseline hardly varied)",
    "unit": "a floor of 1 (the baseline did not vary)",
}
_LOG_CHANGES = {
    "new": "new: logged after the onset, never before",
    "surge": "surge: logged far more often after the onset",
    "drop": "drop: stopped being logged",
}


def number(value: Any) -> str:
    """A number for people: thousands separated, four significant digits below 10,000.

    Examples
    --------
    >>> number(11510.0236), number(0.249222624), number(4), number(1e-7), number("v42")
    ('11,510', '0.2492', '4', '1e-07', 'v42')
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and abs(value) >= 10_000):
        return f"{value:,.0f}"
    return f"{value:.4g}"


def utc(value: Any) -> str:
    """An ISO time from the engine (naive UTC) as ``2026-05-05 22:57 UTC`` (seconds when it has some).

    Examples
    --------
    >>> utc("2026-05-05T22:57:00"), utc("2026-05-05T23:15:30"), utc("not a time")
    ('2026-05-05 22:57 UTC', '2026-05-05 23:15:30 UTC', 'not a time')
    """
    try:
        ts = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return ts.strftime("%Y-%m-%d %H:%M:%S UTC" if ts.second else "%Y-%m-%d %H:%M UTC")


def text(value: Any) -> str:
    """Any value as one line: numbers via :func:`number`, ISO times via :func:`utc`, label dicts as ``k=v``.

    Examples
    --------
    >>> text([{"model_version": "v42"}, {"region": "eu"}]), text(["topology 0.43", "metrics 0.80"])
    ('model_version=v42; region=eu', 'topology 0.43, metrics 0.80')
    >>> text(None), text([]), text(True), text("2026-05-05T23:01:00"), text({"a": 1.23456})
    ('none', 'none', 'yes', '2026-05-05 23:01 UTC', 'a=1.235')
    """
    if value is None or value == [] or value == {}:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return number(value)
    if isinstance(value, str):
        return utc(value) if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?", value) else value
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ("; " if any(isinstance(v, Mapping) for v in value) else ", ").join(text(v) for v in value)
    return json.dumps(value, sort_keys=True, default=str)


def humanise(key: str) -> str:
    """A label for a key no entry of :data:`LABELS` knows: words, and a unit suffix as the unit.

    Examples
    --------
    >>> humanise("onset_lead_s"), humanise("z_peak"), humanise("error_pct"), humanise("kpiDelta")
    ('Onset lead (s)', 'Z peak', 'Error (%)', 'KpiDelta')
    """
    words = [w for w in key.split("_") if w]
    unit = _UNIT_SUFFIXES.get(words[-1]) if len(words) > 1 else None
    if unit:
        words = words[:-1]
    label = " ".join(words) or key
    label = label[:1].upper() + label[1:]
    return f"{label} ({unit})" if unit else label


# -- how the known values read ---------------------------------------------------------------------------
def _plain(value: Any, _ev: Mapping[str, Any], _unit: str | None) -> str:
    return text(value)


def _words(mapping: Mapping[str, str]) -> Show:
    return lambda value, _ev, _unit: mapping.get(str(value), text(value))


def _minutes(value: Any, _ev: Mapping[str, Any], _unit: str | None) -> str:
    if not isinstance(value, int | float):
        return text(value)
    return f"{number(abs(value))} min {'before' if value >= 0 else 'after'} the onset"


def _share(value: Any, _ev: Mapping[str, Any], _unit: str | None) -> str:
    return f"{value:.0%}" if isinstance(value, int | float) else text(value)


def _factor(value: Any, _ev: Mapping[str, Any], _unit: str | None) -> str:
    return f"×{value:.3g}" if isinstance(value, int | float) else text(value)


def _weight(value: Any, _ev: Mapping[str, Any], _unit: str | None) -> str:
    return f"{value:.2f} of 1" if isinstance(value, int | float) else text(value)


def _metric(value: Any, _ev: Mapping[str, Any], unit: str | None) -> str:
    return f"{number(value)} {unit}" if unit and isinstance(value, int | float) else text(value)


def _exposure(value: Any, ev: Mapping[str, Any], _unit: str | None) -> str:
    per = ev.get("exposure_unit")
    return f"{number(value)} {per}" if per and isinstance(value, int | float) else text(value)


def _log_lines(value: Any, _ev: Mapping[str, Any], _unit: str | None) -> str:
    return f"{number(value)} lines" if isinstance(value, int | float) else text(value)


def _hops(value: Any, _ev: Mapping[str, Any], _unit: str | None) -> str:
    if value is None:
        return "no known call path"
    return f"{value} hop{'s' if value != 1 else ''}" if isinstance(value, int) else text(value)


def _p_value(value: Any, _ev: Mapping[str, Any], _unit: str | None) -> str:
    if not isinstance(value, int | float):
        return text(value)
    return "< 1e-30" if value < 1e-30 else f"{value:.2g}"


def _signals(value: Any, _ev: Mapping[str, Any], _unit: str | None) -> str:
    """Topology's per-signal shifts: ``what: z spreads (baseline → window), from HH:MM UTC``."""
    from rca.topology import SIGNAL_TEXT

    if not isinstance(value, Mapping):
        return text(value)
    parts = []
    for name, sig in value.items():
        if not isinstance(sig, Mapping):
            parts.append(f"{SIGNAL_TEXT.get(name, humanise(name))}: {text(sig)}")
            continue
        what = SIGNAL_TEXT.get(name, humanise(name)) + (f" ({sig['detail']})" if sig.get("detail") else "")
        line = f"{what}: {number(sig.get('z'))} spreads"
        if sig.get("baseline") is not None and sig.get("window") is not None:
            line += f" ({number(sig['baseline'])} → {number(sig['window'])})"
        if sig.get("onset"):
            line += f", from {utc(sig['onset'])}"
        parts.append(line)
    return "; ".join(parts) or "none"


class Label(NamedTuple):
    """What a key is (``label``) and how its value reads (``show``)."""

    label: str
    show: Show = _plain


#: every key the analysers write (rca/changes.py, dimensions.py, logs.py, metrics.py, topology.py, combine.py)
LABELS: dict[str, Label] = {
    # a change (deploy, rollout, config ...): rca/changes.py, with rca/combine.py's "dimensions"
    "ts": Label("Change at", _plain),
    "minutes_before_onset": Label("When", _minutes),
    "kind": Label("Change kind"),
    "title": Label("Change"),
    "hops": Label("Distance in the call graph", _hops),
    "direction": Label("Position in the call graph", _words(_DIRECTIONS)),
    "matched_dimensions": Label("Matches the localised dimensions"),
    "matched_labels": Label("Matches the incident's labels"),
    "time_factor": Label("Timing weight (closer to the onset: higher)", _weight),
    "topology_factor": Label("Call-graph weight (closer to the incident: higher)", _weight),
    "kind_prior": Label("Prior for this kind of change", _weight),
    "agreement": Label("Boost from matching labels", _factor),
    "dimensions": Label("Localised dimensions"),
    # a dimension (label combination) of the KPI: rca/dimensions.py
    "actual": Label("KPI in this slice, now", _metric),
    "expected": Label("KPI in this slice, expected", _metric),
    "change": Label("Change in this slice (now ÷ expected)", _factor),
    "explained": Label("Share of the KPI's deviation explained", _share),
    "surprise": Label("Surprise (log-likelihood ratio; higher: less likely by chance)"),
    "kpi_actual": Label("KPI overall, now", _metric),
    "kpi_expected": Label("KPI overall, expected", _metric),
    "kpi_without": Label("KPI overall with this slice at its baseline", _metric),
    "leaves": Label("Series in this slice"),
    "kpi_strength": Label("How far the KPI moved", _weight),
    # a log template: rca/logs.py
    "operation": Label("Operation"),
    "count_baseline": Label("Lines before the onset", _log_lines),
    "count_window": Label("Lines after the onset", _log_lines),
    "expected_window": Label("Lines expected after the onset", _log_lines),
    "exposure_unit": Label("Counted per"),
    "exposure_baseline": Label("Traffic before the onset", _exposure),
    "exposure_window": Label("Traffic after the onset", _exposure),
    "p_value": Label("p-value (chance of a change this large by luck)", _p_value),
    "severity": Label("Log severity"),
    "severity_number": Label("Severity number"),
    "example": Label("Example line"),
    "first_seen": Label("First seen", _plain),
    "template_id": Label("Template id"),
    "explained_by": Label("Probably suffers from (a dependency that moved no later)"),
    "onset": Label("Onset", _plain),
    # a metric's shift: rca/metrics.py
    "baseline_median": Label("Baseline median", _metric),
    "baseline_iqr": Label("Baseline interquartile range", _metric),
    "scale": Label("Spread the shift is measured in", _metric),
    "scale_source": Label("Spread taken from", _words(_SPREADS)),
    "peak": Label("Peak", _metric),
    "peak_ts": Label("Peak at", _plain),
    "move": Label("Move from the baseline median", _metric),
    "baseline_points": Label("Points in the baseline"),
    "window_points": Label("Points after the onset"),
    "series_id": Label("Series id"),
    "top_metric": Label("Most shifted metric"),
    "top_labels": Label("Its labels"),
    "metrics": Label("Metrics compared"),
    # a service: rca/topology.py, with rca/combine.py's "consensus"
    "status": Label("Status", _words(_STATUSES)),
    "signals": Label("Signals that moved", _signals),
    "incident_onset": Label("Incident onset", _plain),
    "consensus": Label("Analysers that point at it (relative strength)"),
}
#: keys whose meaning depends on the candidate's kind
KIND_LABELS: dict[str, dict[str, Label]] = {
    "log": {"change": Label("Change in the log", _words(_LOG_CHANGES))},
}


def evidence_rows(
    kind: str | None, evidence: Mapping[str, Any], unit: str | None = None
) -> list[tuple[str, str]]:
    """``(label, value)`` of each key of a cause's ``evidence``, in its order; ``explanation`` (the cause's
    sentence, shown as its headline) left out. ``unit`` is the unit of the cause's metric, for its values.

    Examples
    --------
    >>> evidence_rows("change", {"minutes_before_onset": 4.0, "direction": "downstream", "explanation": "x"})
    [('When', '4 min before the onset'), ('Position in the call graph', "downstream: called by the incident's service")]
    >>> evidence_rows("metric", {"peak": 237.0, "onset_lead_s": 12, "api_token": "abc"}, unit="ms")
    [('Peak', '237 ms'), ('Onset lead (s)', '12'), ('Api token', '•••• (hidden)')]
    >>> evidence_rows("log", {"change": "new", "exposure_window": 200, "exposure_unit": "calls"})[:2]
    [('Change in the log', 'new: logged after the onset, never before'), ('Traffic after the onset', '200 calls')]
    """
    specific = KIND_LABELS.get(kind or "", {})
    rows = []
    for key, value in evidence.items():
        if key == "explanation":
            continue
        entry = specific.get(key) or LABELS.get(key)
        label = entry.label if entry else humanise(key)
        if SECRET_KEY.search(key):
            rows.append((label, "•••• (hidden)"))
        else:
            rows.append((label, (entry.show if entry else _plain)(value, evidence, unit)))
    return rows


def unit_text(unit: str | None) -> str | None:
    """A metric's unit (OpenTelemetry's UCUM text) for a value: ``None`` for dimensionless ``1``, annotations
    in braces as words.

    Examples
    --------
    >>> unit_text("ms"), unit_text("1"), unit_text("{request}"), unit_text(""), unit_text("By")
    ('ms', None, 'request', None, 'bytes')
    """
    if not unit or unit == "1":
        return None
    if unit == "By":
        return "bytes"
    return unit.strip("{}") or None
