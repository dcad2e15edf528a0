"""Saying what a page could not use of its URL: a mistyped or stale link falls back to the defaults, visibly.

Every filter and view lives in the URL, so links get hand-edited, pasted half or kept after the data changed.
A parameter a page cannot use is still ignored (the page shows its default), and the page says so: which
parameter, the value it ignored, what it expected and what it shows instead, in one notice at the top
(:func:`url_notice`). The nav does the same for the time range (:func:`app.timerange.ignored_params`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dash import html

#: the longest value quoted back (a pasted URL can hold anything)
SHOWN = 60
#: the most choices listed as expected
CHOICES = 12


def _quoted(value: str) -> str:
    return repr(value if len(value) <= SHOWN else value[: SHOWN - 1] + "…")


def one_of(choices: Iterable[str]) -> str:
    """``one of a, b, c`` (the first :data:`CHOICES`, then how many more).

    Examples
    --------
    >>> one_of(["1h", "24h"]), one_of(str(i) for i in range(14)), one_of([])
    ('one of 1h, 24h', 'one of 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 2 more', 'nothing (none in this store)')
    """
    items = list(choices)
    if not items:
        return "nothing (none in this store)"
    more = f" and {len(items) - CHOICES} more" if len(items) > CHOICES else ""
    return f"one of {', '.join(items[:CHOICES])}{more}"


def ignored(params: Mapping[str, str], expected: str, showing: str) -> str:
    """The sentence for URL ``params`` a page ignored: what it expected and what it shows instead.

    Examples
    --------
    >>> ignored({"agg": "bogus"}, one_of(["auto", "avg"]), "auto")
    "Ignored agg='bogus' in the URL: expected one of auto, avg; showing auto."
    >>> ignored({"from": "2026-05-05", "to": "2026-05-04"}, "the start before the end", "Last 24 hours")
    "Ignored from='2026-05-05' and to='2026-05-04' in the URL: expected the start before the end; showing Last 24 hours."
    """
    named = " and ".join(f"{k}={_quoted(v)}" for k, v in params.items())
    return f"Ignored {named} in the URL: expected {expected}; showing {showing}."


def url_notice(messages: list[str], notice_id: str) -> html.Div | None:
    """The notice at the top of a page for its ignored parameters (``None`` when there are none)."""
    if not messages:
        return None
    return html.Div([html.P(m) for m in messages], id=notice_id, className="notice url-notice", role="status")
