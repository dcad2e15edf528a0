"""Prometheus text exposition format (0.0.4) decoder, tolerant of OpenMetrics 1.0 text.

Spec: https://prometheus.io/docs/instrumenting/exposition_formats/ ("Text format details") and, for the
OpenMetrics differences, https://github.com/prometheus/OpenMetrics/blob/main/specification/OpenMetrics.md.

How samples become Rootwise series
----------------------------------
- ``gauge`` and ``untyped``/``unknown`` families become ``gauge`` series, except that an untyped sample whose name
  ends in ``_total`` is a ``counter`` (the Prometheus naming convention for counters).
- ``counter`` families become ``counter`` series named **as exposed**: ``vllm:prompt_tokens_total`` (0.0.4,
  prometheus_client) and the OpenMetrics ``# TYPE vllm:prompt_tokens counter`` + ``vllm:prompt_tokens_total``
  both store ``vllm:prompt_tokens_total``; Triton's typed counter ``nv_inference_count`` stays
  ``nv_inference_count``. The metric name is therefore exactly what a PromQL user would type.
- ``_created`` samples of counters, histograms and summaries are ignored (a start time, not a measurement).
- ``histogram`` families: ``_bucket{le}``, ``_sum`` and ``_count`` samples with the same labels and timestamp
  are folded into one histogram point named after the family, with per-bucket (not cumulative-by-``le``) counts
  and ``cumulative=True`` (counts grow since process start). OpenMetrics ``gaugehistogram`` is folded the same
  way with ``cumulative=False``.
- ``summary`` families: quantile samples become a ``summary`` series carrying the ``quantile`` label;
  ``_sum``/``_count`` become counters ``<family>_sum`` / ``<family>_count``.
- Service: the ``service`` argument, else the ``job`` label (then removed from the labels), else
  ``"unknown_service"``. ``instance`` and every other label stay labels. Labels with an empty value are
  dropped: the spec treats them as absent.
- Timestamps are milliseconds since the epoch (0.0.4) or, when the text ends with ``# EOF``, OpenMetrics
  seconds; samples without one get ``default_ts_ns`` (else the parse time, to the millisecond).

Bad lines are dead-lettered with their line number and what was expected; the rest of the text is still
stored. Non-finite sample values (``NaN``, ``±Inf``) are dead-lettered too: ``points.value`` holds finite
numbers only (``+Inf`` as an ``le`` bound is a bucket bound, not a value).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Mapping

from ingest.batch import MetricBuilder, TelemetryBatch

#: longest label value accepted, in characters. Prometheus itself has no default limit
#: (``label_value_length_limit``), but a multi-kilobyte value is a bug in the exporter (a request body or
#: stack trace used as a label) and would bloat every row of the series catalog.
MAX_LABEL_VALUE_LEN = 4096

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
# label values: any UTF-8 except that \ " and line feed are escaped as \\ \" \n (spec, "Text format details")
_LABEL_VALUE = r'"(?:[^"\\]|\\[\\"n])*"'
_PAIR = rf"{_LABEL_NAME}[ \t]*=[ \t]*{_LABEL_VALUE}[ \t]*"
# fast path: ``name{labels} value [timestamp]``; anything else goes to the slow, diagnosing parser. Every run
# of blanks is matched by exactly one ``[ \t]*`` between fixed tokens, so a failing line costs linear time.
_SAMPLE_RE = re.compile(
    rf"[ \t]*({_NAME})(?:[ \t]*\{{([ \t]*(?:{_PAIR}(?:,[ \t]*{_PAIR})*(?:,[ \t]*)?)?)\}}[ \t]*|[ \t]+)"
    r"([^ \t#]+)(?:[ \t]+([^ \t#]+))?[ \t]*"
)
_PAIR_RE = re.compile(rf'({_LABEL_NAME})[ \t]*=[ \t]*"((?:[^"\\]|\\[\\"n])*)"')
_ESCAPE_RE = re.compile(r"\\(.)")
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}
_NAME_RE = re.compile(_NAME)
_LABEL_NAME_RE = re.compile(_LABEL_NAME)
_SNIFF_COMMENT_RE = re.compile(rf"#[ \t]+(?:HELP|TYPE)[ \t]+{_NAME}(?:[ \t]|$)")

#: family types of the 0.0.4 text format, plus the OpenMetrics ones
_TYPES = (
    "counter",
    "gauge",
    "histogram",
    "summary",
    "untyped",
    "unknown",
    "info",
    "stateset",
    "gaugehistogram",
)
#: sample-name suffixes that belong to a family of each type (OpenMetrics "Suffixes" per metric type)
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
}
_ALL_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created", "_gcount", "_gsum", "_info")
_HAS_CREATED = ("counter", "histogram", "summary")

# roles of a sample name, resolved once per name
_GAUGE, _COUNTER, _SUMMARY, _BUCKET, _HSUM, _HCOUNT, _SKIP, _BAD = range(8)

_UNKNOWN_SERVICE = "unknown_service"


class _LineError(ValueError):
    """A line that does not follow the format; the message says what was expected."""


def _unescape(value: str) -> str:
    return _ESCAPE_RE.sub(lambda m: _UNESCAPE[m.group(1)], value)


def _parse_labels(blob: str) -> tuple[tuple[str, str], ...]:
    """Label pairs of a ``{...}`` body already matched by the fast regex (so well-formed)."""
    pairs = _PAIR_RE.findall(blob)
    if "\\" in blob:
        pairs = [(k, _unescape(v)) for k, v in pairs]
    if len(pairs) > 1 and len({k for k, _ in pairs}) != len(pairs):
        counts = Counter(k for k, _ in pairs)
        dup = next(k for k, _ in pairs if counts[k] > 1)
        raise _LineError(f"label {dup!r} appears more than once (expected unique label names)")
    if len(blob) > MAX_LABEL_VALUE_LEN:
        for k, v in pairs:
            if len(v) > MAX_LABEL_VALUE_LEN:
                raise _LineError(
                    f"value of label {k!r} is {len(v)} characters long (expected at most {MAX_LABEL_VALUE_LEN})"
                )
    # "Labels with an empty label value are considered equivalent to labels that do not exist" (data model)
    return tuple(p for p in pairs if p[1])


def _parse_slow(line: str) -> tuple[str, str, str, str | None]:
    """Parse a sample line character by character, saying precisely what is wrong when it is.

    Handles what the fast regex does not: OpenMetrics exemplars (``... # {trace_id="..."} 1.0``) and every
    error. Returns the name, the canonical label body, the value token and the timestamp token.
    """
    n = len(line)
    i = 0
    while i < n and line[i] in " \t":
        i += 1
    m = _NAME_RE.match(line, i)
    if m is None:
        raise _LineError(
            f"expected a metric name matching {_NAME} at column {i + 1}, got {line[i : i + 20]!r}"
        )
    name = m.group(0)
    i = m.end()
    while i < n and line[i] in " \t":
        i += 1
    pairs: list[str] = []
    if i < n and line[i] == "{":
        i += 1
        while True:
            while i < n and line[i] in " \t":
                i += 1
            if i < n and line[i] == "}":
                i += 1
                break
            lm = _LABEL_NAME_RE.match(line, i)
            if lm is None:
                raise _LineError(
                    f"expected a label name matching {_LABEL_NAME} or '}}' at column {i + 1}, "
                    f"got {line[i : i + 20]!r}"
                )
            i = lm.end()
            while i < n and line[i] in " \t":
                i += 1
            if i >= n or line[i] != "=":
                raise _LineError(f"expected '=' after label name {lm.group(0)!r} at column {i + 1}")
            i += 1
            while i < n and line[i] in " \t":
                i += 1
            if i >= n or line[i] != '"':
                raise _LineError(
                    f"expected '\"' to open the value of label {lm.group(0)!r} at column {i + 1}"
                )
            start = i
            i += 1
            while True:
                if i >= n:
                    raise _LineError(
                        f"value of label {lm.group(0)!r} is not closed (expected a closing '\"')"
                    )
                c = line[i]
                if c == '"':
                    break
                if c == "\\":
                    if i + 1 >= n or line[i + 1] not in '\\"n':
                        raise _LineError(
                            f"invalid escape sequence {line[i : i + 2]!r} in the value of label {lm.group(0)!r} "
                            '(expected \\\\, \\" or \\n)'
                        )
                    i += 1
                i += 1
            pairs.append(f"{lm.group(0)}={line[start : i + 1]}")
            i += 1
            while i < n and line[i] in " \t":
                i += 1
            if i < n and line[i] == ",":
                i += 1
            elif i < n and line[i] == "}":
                i += 1
                break
            else:
                raise _LineError(
                    f"expected ',' or '}}' after the value of label {lm.group(0)!r} at column {i + 1}"
                )
    elif i < n and line[i] not in " \t" and i == m.end():
        raise _LineError(f"unexpected character {line[i]!r} in metric name {name!r} at column {i + 1}")
    rest = line[i:]
    hash_at = rest.find("#")
    if hash_at >= 0:
        # OpenMetrics exemplar after the value (and timestamp); its contents are not stored
        exemplar = rest[hash_at + 1 :].lstrip(" \t")
        if not exemplar.startswith("{"):
            raise _LineError(
                f"unexpected '#' after the metric at column {i + hash_at + 1} (expected an exemplar '# {{')"
            )
        rest = rest[:hash_at]
    tokens = rest.split()
    if not tokens:
        raise _LineError(f"expected a sample value after {name}{'{...}' if pairs else ''}, got nothing")
    if len(tokens) > 2:
        raise _LineError(
            f"expected a value and an optional timestamp after the metric, got {len(tokens)} tokens"
        )
    return name, ",".join(pairs), tokens[0], tokens[1] if len(tokens) == 2 else None


class _Histogram:
    """Samples of one histogram point being folded: ``(le, cumulative count)``, ``_sum``, ``_count``."""

    __slots__ = ("buckets", "total", "count", "lines")

    def __init__(self) -> None:
        self.buckets: list[tuple[float, float]] = []
        self.total: float | None = None
        self.count: float | None = None
        self.lines: list[int] = []


class _Parser:
    """One parse of one exposition; holds the per-text state (types, units, histograms in progress)."""

    def __init__(
        self,
        source: str,
        service: str | None,
        default_ts_ns: int | None,
        target_labels: Mapping[str, str] | None,
    ) -> None:
        self.builder = MetricBuilder(source)
        self.service = service
        if default_ts_ns is None:
            default_ts_ns = time.time_ns() // 1_000_000 * 1_000_000
        self.default_ts_ns = default_ts_ns
        self.target_labels = dict(target_labels or {})
        self.types: dict[str, str] = {}
        self.units: dict[str, str] = {}
        self.created_parents: set[str] = set()
        self.roles: dict[str, tuple[int, str, str]] = {}  # sample name -> (role, family, kind)
        self.label_cache: dict[str, tuple[tuple[str, str], ...]] = {}
        self.hists: dict[tuple, _Histogram] = {}
        self.lines: list[str] = []
        self.openmetrics = False

    # -- names and labels ------------------------------------------------------------------------------
    def role(self, name: str) -> tuple[int, str, str]:
        """Role of a sample name in its family, from the TYPE lines seen so far."""
        if name.endswith("_created") and name[:-8] in self.created_parents:
            return _SKIP, name, ""
        typ = self.types.get(name)
        if typ is not None:
            if typ == "counter":
                return _COUNTER, name, "counter"
            if typ == "summary":
                return _SUMMARY, name, "summary"
            if typ in ("histogram", "gaugehistogram"):
                return (
                    _BAD,
                    name,
                    f"a {typ} family exposes only _bucket, _sum and _count samples, not {name!r}",
                )
            return _GAUGE, name, "gauge"
        for suffix in _ALL_SUFFIXES:
            if name.endswith(suffix):
                family = name[: -len(suffix)]
                typ = self.types.get(family)
                if typ is None or suffix not in _SUFFIXES.get(typ, ()):
                    continue
                if suffix == "_bucket":
                    return _BUCKET, family, typ
                if suffix in ("_sum", "_gsum"):
                    return (_HSUM, family, typ) if typ != "summary" else (_COUNTER, name, "counter")
                if suffix in ("_count", "_gcount"):
                    return (_HCOUNT, family, typ) if typ != "summary" else (_COUNTER, name, "counter")
                if suffix == "_total":
                    return _COUNTER, name, "counter"
                if suffix == "_info":
                    return _GAUGE, name, "gauge"
        if name.endswith("_total"):
            self.created_parents.add(name[:-6])
            return _COUNTER, name, "counter"
        return _GAUGE, name, "gauge"

    def labels_of(self, pairs: tuple[tuple[str, str], ...]) -> tuple[str, dict[str, str]]:
        """Service and stored labels of a sample's label pairs (target labels applied first)."""
        labels = dict(pairs)
        if self.target_labels:
            # like Prometheus with honor_labels: false, a target label wins and the exposed one is kept
            # as exported_<name>
            for k, v in self.target_labels.items():
                if k in labels and labels[k] != v:
                    labels[f"exported_{k}"] = labels[k]
                labels[k] = v
        if self.service is not None:
            return self.service, labels
        return labels.pop("job", None) or _UNKNOWN_SERVICE, labels

    # -- comments -------------------------------------------------------------------------------------
    def comment(self, lineno: int, line: str) -> None:
        parts = line.lstrip(" \t")[1:].split(None, 3)
        if len(parts) < 1 or parts[0] not in ("TYPE", "HELP", "UNIT"):
            return  # a plain comment (or OpenMetrics "# EOF")
        keyword = parts[0]
        if len(parts) < 2 or not _NAME_RE.fullmatch(parts[1]):
            got = parts[1] if len(parts) > 1 else "nothing"
            self.reject(lineno, f"expected a metric name after # {keyword}, got {got!r}", line)
            return
        name = parts[1]
        if keyword == "HELP":
            return
        if keyword == "UNIT":
            if len(parts) > 2:
                self.units[name] = parts[2]
            return
        typ = parts[2].lower() if len(parts) > 2 else ""
        if len(parts) != 3 or typ not in _TYPES:
            self.reject(lineno, f"expected '# TYPE {name} <type>' with type one of {', '.join(_TYPES)}", line)
            return
        if name in self.types:
            # the spec allows one TYPE line per family, but files that concatenate scrapes repeat it: only a
            # conflicting repeat is an error
            if self.types[name] != typ:
                self.reject(
                    lineno,
                    f"TYPE {typ} for {name!r} conflicts with the earlier TYPE {self.types[name]}",
                    line,
                )
            return
        # ``roles`` caches every sample name seen so far, so it doubles as the "already seen" set
        if any(s in self.roles for s in (name, *(name + x for x in _ALL_SUFFIXES))):
            self.reject(
                lineno,
                f"TYPE line for {name!r} after its samples (expected it before the first sample)",
                line,
            )
            return
        self.types[name] = typ
        if typ in _HAS_CREATED:
            self.created_parents.add(name)
            if typ == "counter" and name.endswith("_total"):
                self.created_parents.add(name[:-6])
                self.roles.pop(name[:-6] + "_created", None)

    # -- samples --------------------------------------------------------------------------------------
    def reject(self, lineno: int, reason: str, raw: str) -> None:
        # the location is stored (and shown) with the reason: saying it in the reason too repeated it
        self.builder.reject(f"line {lineno}", reason, raw)

    def timestamp(self, tok: str) -> int:
        if self.openmetrics:
            # OpenMetrics: "Timestamps MUST be Unix Epoch in seconds", possibly fractional
            try:
                ts = float(tok)
            except ValueError:
                raise _LineError(f"expected a timestamp in seconds since the epoch, got {tok!r}") from None
            if not math.isfinite(ts):
                raise _LineError(f"expected a finite timestamp, got {tok!r}")
            return round(ts * 1e9)
        # 0.0.4: "timestamp an int64 (milliseconds since epoch ...)"
        try:
            if "_" in tok:
                raise ValueError(tok)
            return int(tok) * 1_000_000
        except ValueError:
            raise _LineError(
                f"expected an integer timestamp in milliseconds since the epoch, got {tok!r}"
            ) from None

    def parse(self, text: bytes | str) -> TelemetryBatch:
        bad_utf8 = False
        if isinstance(text, bytes | bytearray | memoryview):
            raw_bytes = bytes(text)
            try:
                text = raw_bytes.decode("utf-8")
            except UnicodeDecodeError:
                # keep going: only the lines holding invalid bytes are dead-lettered
                text = raw_bytes.decode("utf-8", "surrogateescape")
                bad_utf8 = True
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        # OpenMetrics ends with "# EOF" and uses seconds for timestamps
        self.openmetrics = text[-64:].rstrip().endswith("# EOF")
        lines = self.lines = text.split("\n")

        b = self.builder
        min_ns, max_ns = b.min_ns, b.max_ns
        default_ts = self.default_ts_ns
        fast = _SAMPLE_RE.fullmatch
        roles = self.roles
        label_cache = self.label_cache
        units = self.units
        hists = self.hists
        isfinite = math.isfinite

        for lineno, line in enumerate(lines, 1):
            m = fast(line)
            try:
                if m is not None:
                    name, blob, val, ts_tok = m.groups()
                else:
                    stripped = line.strip(" \t")
                    if not stripped:
                        continue
                    if bad_utf8 and not line.isascii():
                        try:
                            line.encode("utf-8")
                        except UnicodeEncodeError:
                            raise _LineError("line is not valid UTF-8 (the text format is UTF-8)") from None
                    if stripped[0] == "#":
                        self.comment(lineno, line)
                        continue
                    name, blob, val, ts_tok = _parse_slow(line)
                if bad_utf8 and m is not None and not line.isascii():
                    try:
                        line.encode("utf-8")
                    except UnicodeEncodeError:
                        raise _LineError("line is not valid UTF-8 (the text format is UTF-8)") from None

                role_info = roles.get(name)
                if role_info is None:
                    role_info = roles[name] = self.role(name)
                role, family, kind = role_info
                if role == _SKIP:
                    continue
                if role == _BAD:
                    raise _LineError(kind)
                if blob:
                    pairs = label_cache.get(blob)
                    if pairs is None:
                        pairs = label_cache[blob] = _parse_labels(blob)
                else:
                    pairs = ()
                if "_" in val:
                    raise _LineError(f"expected a float sample value, got {val!r}")
                try:
                    value = float(val)
                except ValueError:
                    raise _LineError(
                        f"expected a float sample value (or NaN, +Inf, -Inf), got {val!r}"
                    ) from None
                ts_ns = default_ts if ts_tok is None else self.timestamp(ts_tok)
                if not min_ns <= ts_ns <= max_ns:
                    raise _LineError(
                        f"timestamp {ts_tok if ts_tok is not None else f'{ts_ns} ns (the default)'} is outside "
                        "the accepted range (expected "
                        f"{'seconds' if self.openmetrics else 'milliseconds'} since the epoch after 1990 and "
                        "at most a day ahead)"
                    )

                if role <= _SUMMARY:  # a point: gauge, counter or summary quantile
                    if not isfinite(value):
                        raise _LineError(
                            f"sample value {val} is not a finite number (expected a finite float)"
                        )
                    if role == _SUMMARY and not any(k == "quantile" for k, _ in pairs):
                        raise _LineError(
                            f'summary sample {name!r} has no quantile label (expected quantile="...")'
                        )
                    service, labels = self.labels_of(pairs)
                    sid = b.series(family, service, kind, units.get(family), labels)
                    b.point(sid, ts_ns, value, f"line {lineno}", line)
                    continue

                # histogram parts, folded per (family, labels without le, timestamp)
                if role == _BUCKET:
                    le = None
                    rest = []
                    for k, v in pairs:
                        if k == "le":
                            le = v
                        else:
                            rest.append((k, v))
                    if le is None:
                        raise _LineError(
                            f'histogram bucket {name!r} has no le label (expected le="<upper bound>")'
                        )
                    try:
                        bound = float(le)
                    except ValueError:
                        raise _LineError(f"expected a float le bound (or +Inf), got le={le!r}") from None
                    if math.isnan(bound) or bound == -math.inf:
                        raise _LineError(f"expected a number or +Inf as le bound, got le={le!r}")
                    # label order may differ between _bucket, _sum and _count lines: key on sorted labels
                    hkey = (family, kind, tuple(sorted(rest)), ts_ns)
                    h = hists.get(hkey)
                    if h is None:
                        h = hists[hkey] = _Histogram()
                    h.buckets.append((bound, value))
                else:
                    hkey = (family, kind, tuple(sorted(pairs)), ts_ns)
                    h = hists.get(hkey)
                    if h is None:
                        h = hists[hkey] = _Histogram()
                    if role == _HSUM:
                        h.total = value
                    else:
                        h.count = value
                h.lines.append(lineno)
            except _LineError as exc:
                self.reject(lineno, str(exc), line)

        for key, h in hists.items():
            self.fold(key, h)
        return b.build()

    def fold(self, key: tuple, h: _Histogram) -> None:
        """Store one histogram point: cumulative-by-le buckets -> per-bucket counts, +Inf bucket last."""
        family, kind, pairs, ts_ns = key
        first, last = h.lines[0], h.lines[-1]
        where = f"lines {first}-{last}" if first != last else f"line {first}"
        raw = "\n".join(self.lines[i - 1] for i in h.lines)

        def reject(reason: str) -> None:
            self.builder.reject(where, f"histogram {family!r}: {reason}", raw)

        buckets = sorted(h.buckets)
        if not buckets or buckets[-1][0] != math.inf:
            reject('no le="+Inf" bucket (expected one, counting every observation)')
            return
        les = [le for le, _ in buckets]
        if len(set(les)) != len(les):
            reject("the same le bound appears twice (expected one bucket per bound)")
            return
        cum = [c for _, c in buckets]
        if not all(math.isfinite(c) and c >= 0 for c in cum):
            reject("a bucket count is negative or not finite (expected finite counts >= 0)")
            return
        if any(c2 < c1 for c1, c2 in zip(cum, cum[1:], strict=False)):
            reject("bucket counts decrease with le (expected cumulative counts, non-decreasing in le)")
            return
        count = cum[-1] if h.count is None else h.count
        if count != cum[-1]:
            reject(f'_count is {h.count} but the le="+Inf" bucket is {cum[-1]} (expected them equal)')
            return
        counts = [cum[0]] + [c2 - c1 for c1, c2 in zip(cum, cum[1:], strict=False)]
        # a sum of NaN/Inf (an Inf or NaN was observed) is not a number we can store; the buckets still are
        total = h.total if h.total is not None and math.isfinite(h.total) else None
        service, labels = self.labels_of(pairs)
        sid = self.builder.series(family, service, "histogram", self.units.get(family), labels)
        self.builder.histogram(
            sid, ts_ns, count, total, None, None, les[:-1], counts, kind == "histogram", where, raw
        )


def parse_prometheus_text(
    text: bytes | str,
    source: str,
    *,
    service: str | None = None,
    default_ts_ns: int | None = None,
) -> TelemetryBatch:
    """Decode a Prometheus text exposition into a batch (see the module docstring for the mapping).

    Parameters
    ----------
    text
        The exposition (UTF-8 bytes or text); OpenMetrics text ending in ``# EOF`` is accepted too.
    source
        Where it came from (file path or URL), recorded with each dead-lettered line.
    service
        Service of every series; default: each sample's ``job`` label, else ``"unknown_service"``.
    default_ts_ns
        Timestamp (epoch ns) of samples that carry none; default: now.

    Examples
    --------
    >>> text = '''# TYPE vllm:num_requests_running gauge
    ... vllm:num_requests_running{model_name="llama"} 3
    ... vllm:num_requests_waiting{model_name="llama"} NaN
    ... '''
    >>> batch = parse_prometheus_text(text, "example", service="vllm", default_ts_ns=1_700_000_000_000_000_000)
    >>> batch.points["value"].to_list(), batch.series["metric"].to_list()
    ([3.0], ['vllm:num_requests_running'])
    >>> batch.rejects[0].reason
    'sample value NaN is not a finite number (expected a finite float)'
    >>> batch.rejects[0].location
    'line 3'
    """
    return _Parser(source, service, default_ts_ns, None).parse(text)


def parse_scrape(
    text: bytes | str,
    source: str,
    *,
    service: str | None,
    default_ts_ns: int,
    target_labels: Mapping[str, str],
) -> TelemetryBatch:
    """:func:`parse_prometheus_text` with a scrape target's labels added to every sample.

    A target label overrides an exposed label of the same name, which is kept as ``exported_<name>``
    (Prometheus' ``honor_labels: false``).
    """
    return _Parser(source, service, default_ts_ns, target_labels).parse(text)


def looks_like_prometheus(head: bytes) -> bool:
    """Whether the first bytes of a file look like Prometheus (or OpenMetrics) text exposition.

    True when a ``# HELP``/``# TYPE`` line appears among the first lines, or when the first sample lines all
    parse as ``name{labels} value [timestamp]``.

    Examples
    --------
    >>> looks_like_prometheus(b'# HELP up Whether the target is up.\\n# TYPE up gauge\\nup 1\\n')
    True
    >>> looks_like_prometheus(b'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5\\n')
    True
    >>> looks_like_prometheus(b'{"resourceMetrics": []}'), looks_like_prometheus(b"ts,metric,value\\n")
    (False, False)
    """
    text = head.decode("utf-8", "replace").lstrip("\ufeff")
    lines = text.split("\n")
    if len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut short by the sniffing window
    samples = 0
    for line in lines[:50]:
        line = line.rstrip("\r")
        stripped = line.strip(" \t")
        if not stripped:
            continue
        if stripped[0] == "#":
            if _SNIFF_COMMENT_RE.match(stripped):
                return True
            continue
        m = _SAMPLE_RE.fullmatch(line)
        if m is None:
            return False
        try:
            float(m.group(3))
        except ValueError:
            return False
        samples += 1
        if samples >= 3:
            break
    return samples > 0
