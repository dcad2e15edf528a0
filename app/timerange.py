"""The app's shared time range: what the nav's picker writes to the URL and every time-series page reads.

In the URL a range is a preset (``?range=24h``) or a custom window (``?from=2026-05-04T00:00&to=2026-05-05T12:00``,
UTC, like every stored time). Inside the app it travels as one string, its *token*: the preset name or the
window as an ISO 8601 interval (``2026-05-04T00:00/2026-05-05T12:00``). No range in the URL means
:data:`DEFAULT`, and a page writing its own query keeps the range params the URL had (none stays none), so
a link shared without a range still opens on the default.

Relative presets end at the newest data in the store, not at the wall clock: a demo, a replay or a store
copied off a server holds data from the past, and "last hour" of it should not be empty.
"""

from __future__ import annotations

from datetime import datetime, timedelta

PRESETS: dict[str, timedelta | None] = {
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(days=1),
    "3d": timedelta(days=3),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "all": None,
}
LABELS = {
    "1h": "Last 1 hour",
    "6h": "Last 6 hours",
    "24h": "Last 24 hours",
    "3d": "Last 3 days",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "all": "All data",
}
DEFAULT = "24h"
#: the picker's choice for a from/to window (never a token: a custom token is the window itself)
CUSTOM = "custom"
#: URL keys of a range; a page's own query never uses them for anything else
KEYS = ("range", "from", "to")
_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d")


def parse_time(text: str | None) -> datetime | None:
    """A UTC time typed by a person or read from the URL; ``None`` when it is not one.

    Takes ``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM`` (``T`` or a space) with optional seconds, and a trailing ``Z``
    or ``UTC``.

    Examples
    --------
    >>> parse_time("2026-05-04 13:30"), parse_time("2026-05-04T13:30:15Z"), parse_time("2026-05-04")
    (datetime.datetime(2026, 5, 4, 13, 30), datetime.datetime(2026, 5, 4, 13, 30, 15), datetime.datetime(2026, 5, 4, 0, 0))
    >>> parse_time("yesterday") is None, parse_time("2026-13-01") is None, parse_time(None) is None
    (True, True, True)
    """
    if not text:
        return None
    cleaned = text.strip().removesuffix("UTC").removesuffix("Z").strip().replace(" ", "T", 1)
    for fmt in _FORMATS:
        try:
            return datetime.strptime(cleaned, fmt)
        except ValueError:
            continue
    return None


def format_time(ts: datetime) -> str:
    """``2026-05-04T13:30``: a window bound in the URL and in a token (seconds only when there are some)."""
    return ts.strftime("%Y-%m-%dT%H:%M:%S" if ts.second else "%Y-%m-%dT%H:%M")


def custom_token(start: datetime, end: datetime) -> str:
    """The token of the window ``[start, end)``."""
    return f"{format_time(start)}/{format_time(end)}"


def token_from_query(range_: str | None, from_: str | None = None, to: str | None = None) -> str | None:
    """The token of a URL's range params; ``None`` when it has none (or none that parse: the default applies).

    A preset wins over a window; a window needs both bounds, ``from`` before ``to``.

    Examples
    --------
    >>> token_from_query("7d"), token_from_query(None, "2026-05-04", "2026-05-05 12:00")
    ('7d', '2026-05-04T00:00/2026-05-05T12:00')
    >>> token_from_query("2y"), token_from_query(None, "2026-05-05", "2026-05-04"), token_from_query(None)
    (None, None, None)
    """
    if range_ in PRESETS:
        return range_
    start, end = parse_time(from_), parse_time(to)
    if start is not None and end is not None and start < end:
        return custom_token(start, end)
    return None


def ignored_params(range_: str | None, from_: str | None = None, to: str | None = None) -> list[str]:
    """What of a URL's range params the app cannot use and so ignores, in words (:func:`app.notices.ignored`).

    Examples
    --------
    >>> ignored_params("7d"), ignored_params(None, "2026-05-04", "2026-05-05")
    ([], [])
    >>> ignored_params("nonsense")
    ["Ignored range='nonsense' in the URL: expected one of 1h, 6h, 24h, 3d, 7d, 30d, all (or from= and to=); showing Last 24 hours."]
    >>> ignored_params(None, "2026-05-05", "yesterday")
    ["Ignored to='yesterday' in the URL: expected a UTC time, YYYY-MM-DDTHH:MM; showing Last 24 hours."]
    >>> ignored_params(None, "2026-05-05")
    ["Ignored from='2026-05-05' in the URL: expected to= as well (a custom range needs both); showing Last 24 hours."]
    >>> ignored_params("7d", "2026-05-04", "2026-05-05")
    ["Ignored from='2026-05-04' and to='2026-05-05' in the URL: expected them without range= (range=7d wins); showing Last 7 days."]
    """
    from app.notices import ignored, one_of

    token = token_from_query(range_, from_, to)
    preset = parse_token(token)[0]
    showing = LABELS[preset] if preset else describe(token, None)
    bounds = {k: v for k, v in (("from", from_), ("to", to)) if v is not None}
    if range_ is not None and range_ not in PRESETS:
        return [ignored({"range": range_}, f"{one_of(PRESETS)} (or from= and to=)", showing)]
    if range_ in PRESETS:
        if not bounds:
            return []
        return [ignored(bounds, f"them without range= (range={range_} wins)", showing)]
    out = []
    for key, value in bounds.items():
        if parse_time(value) is None:
            out.append(ignored({key: value}, "a UTC time, YYYY-MM-DDTHH:MM", showing))
    if out or not bounds:
        return out
    if len(bounds) == 1:
        (key, value), other = next(iter(bounds.items())), "to" if "from" in bounds else "from"
        return [ignored({key: value}, f"{other}= as well (a custom range needs both)", showing)]
    if token is None:  # both parse, in the wrong order
        return [ignored(bounds, "the start before the end", showing)]
    return []


def parse_token(token: str | None) -> tuple[str | None, datetime | None, datetime | None]:
    """``(preset, start, end)`` of a token: a preset and no bounds, or no preset and both bounds.

    Anything else, ``None`` included, is the default preset.

    Examples
    --------
    >>> parse_token("all"), parse_token(None)
    (('all', None, None), ('24h', None, None))
    >>> parse_token("2026-05-04T00:00/2026-05-05T00:00")
    (None, datetime.datetime(2026, 5, 4, 0, 0), datetime.datetime(2026, 5, 5, 0, 0))
    """
    if token in PRESETS:
        return token, None, None
    if token and "/" in token:
        left, right = token.split("/", 1)
        start, end = parse_time(left), parse_time(right)
        if start is not None and end is not None and start < end:
            return None, start, end
    return DEFAULT, None, None


def query(token: str | None) -> dict[str, str]:
    """The URL params of a token, to merge into a page's own query (empty for ``None``: keep the URL as it was).

    Examples
    --------
    >>> query("7d"), query(None), query("2026-05-04T00:00/2026-05-05T00:00")
    ({'range': '7d'}, {}, {'from': '2026-05-04T00:00', 'to': '2026-05-05T00:00'})
    """
    if token is None:
        return {}
    preset, start, end = parse_token(token)
    if preset is not None or start is None or end is None:
        return {"range": preset or DEFAULT}
    return {"from": format_time(start), "to": format_time(end)}


def window(
    token: str | None, bounds: tuple[datetime, datetime] | None, *, clip: bool = True
) -> tuple[datetime, datetime] | None:
    """The ``[start, end]`` a token means over a store whose data spans ``bounds`` (``data.data_range()``).

    Presets end at the newest data (``bounds[1]``) and, with ``clip`` (charts: no empty stretch on the left),
    never start before the oldest; a custom window is taken as it is, data or not. ``None``: a preset over an
    empty store.

    Examples
    --------
    >>> b = (datetime(2026, 5, 1), datetime(2026, 5, 6))
    >>> window("24h", b)
    (datetime.datetime(2026, 5, 5, 0, 0), datetime.datetime(2026, 5, 6, 0, 0))
    >>> window("30d", b) == b == window("all", b), window("1h", None), window("7d", b, clip=False)[0]
    (True, None, datetime.datetime(2026, 4, 29, 0, 0))
    >>> window("2026-04-01T00:00/2026-04-02T00:00", None)
    (datetime.datetime(2026, 4, 1, 0, 0), datetime.datetime(2026, 4, 2, 0, 0))
    """
    preset, start, end = parse_token(token)
    if start is not None and end is not None:
        return start, end
    if bounds is None:
        return None
    span = PRESETS[preset or DEFAULT]
    if span is None:
        return bounds
    return (max(bounds[0], bounds[1] - span) if clip else bounds[1] - span), bounds[1]


def describe(token: str | None, bounds: tuple[datetime, datetime] | None) -> str:
    """What a token shows, for the nav (next to its "UTC"): the window and, for a preset, its anchor.

    Examples
    --------
    >>> describe("24h", (datetime(2026, 5, 1), datetime(2026, 5, 6, 9, 30)))
    '2026-05-05 09:30 → 2026-05-06 09:30, ending at the newest data'
    >>> describe("2026-04-01T00:00/2026-04-02T00:00", None)
    '2026-04-01 00:00 → 2026-04-02 00:00'
    >>> describe("6h", None)
    'no data yet'
    """
    span = window(token, bounds)
    if span is None:
        return "no data yet"
    text = f"{span[0]:%Y-%m-%d %H:%M} → {span[1]:%Y-%m-%d %H:%M}"
    return text + (", ending at the newest data" if parse_token(token)[0] is not None else "")
