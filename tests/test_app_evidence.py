"""The root-cause evidence in words (``app/evidence.py``): every key the analysers write has a label.

The engine runs for real on the rollout store of ``test_rca_engine.py`` (changes, dimensions, services,
metrics) and the log analyser on the payments fixture of ``test_rca_logs.py``; a key added to ``rca/``
without a label fails here instead of reaching the incident page as ``snake_case``.
"""

from __future__ import annotations

from datetime import timedelta

from test_rca_engine import ONSET, rollout_store  # noqa: F401 (the fixture)
from test_rca_logs import INCIDENT as LOG_INCIDENT
from test_rca_logs import _shop

from app.evidence import KIND_LABELS, LABELS, evidence_rows
from ingest.rca_view import StoreView
from rca.base import Candidate, FrameView, RcaIncident
from rca.combine import RootCauseEngine
from rca.logs import LogTemplateAnalyser
from rca.metrics import MetricShiftAnalyser


def _candidates(store) -> list[Candidate]:
    incident = RcaIncident("gateway", "errors", ONSET, ONSET + timedelta(minutes=20))
    view = StoreView(store)
    logs, spans = _shop()
    return [
        *RootCauseEngine().explain(incident, view).candidates,
        *MetricShiftAnalyser().explain(incident, view).candidates,  # its per-service summaries too
        *LogTemplateAnalyser().explain(LOG_INCIDENT, FrameView(logs=logs, spans=spans)).candidates,
    ]


def test_every_evidence_key_the_analysers_write_has_a_label(rollout_store):  # noqa: F811 (the fixture)
    candidates = _candidates(rollout_store)
    assert {c.kind for c in candidates} >= {"change", "dimension", "service", "metric", "log"}
    unlabelled = {
        (c.kind, key)
        for c in candidates
        for key in c.evidence
        if key not in LABELS and key not in KIND_LABELS.get(c.kind, {})
    }
    assert not unlabelled, f"evidence keys without a label in app/evidence.py: {sorted(unlabelled)}"
    for c in candidates:
        for label, value in evidence_rows(c.kind, {**c.evidence, "explanation": c.explanation}):
            assert "_" not in label and value, (c.kind, label, value)
            assert label != "Explanation"  # the cause's headline, not a row
