"""RCA for incidents that detection opened: explain each one once and store its causes with it.

``rootwise detect`` calls :func:`explain_new_incidents` after every run (unless ``--no-rca``), so the incident
list, the app and alert notifications carry the top causes; ``rootwise rca --incident ID`` recomputes one on
demand (e.g. once the incident has grown).
"""

from __future__ import annotations

import time
from typing import Any

from ingest.store import Store


def explain_new_incidents(store: Store, *, limit: int | None = None, progress: Any = None) -> dict[str, Any]:
    """Run the root-cause engine on every stored incident without causes (newest first, at most ``limit``)."""
    from ingest.rca_view import StoreView
    from ingest.results import get_incident, incidents_without_causes, save_causes
    from rca.combine import RootCauseEngine, incident_from_record

    started = time.perf_counter()
    ids = incidents_without_causes(store)[:limit] if limit else incidents_without_causes(store)
    view = StoreView(store)
    slowest = 0.0
    for i, incident_id in enumerate(ids):
        record = get_incident(store, incident_id)
        if record is None:  # removed meanwhile
            continue
        t0 = time.perf_counter()
        result = RootCauseEngine().explain(incident_from_record(record), view)
        save_causes(store, incident_id, result.to_json()["causes"])
        slowest = max(slowest, time.perf_counter() - t0)
        if progress is not None:
            progress(i + 1, len(ids))
    return {
        "explained": len(ids),
        "seconds": round(time.perf_counter() - started, 2),
        "slowest_seconds": round(slowest, 2),
    }
