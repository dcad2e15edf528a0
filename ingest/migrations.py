"""Versioned schema migrations of the DuckDB store.

Each migration is applied once, in order, inside a transaction, and recorded in ``schema_migrations``;
a file written by an older Rootwise therefore opens in a newer one. Never edit a released migration:
append a new one.

``points`` deliberately has no primary key: an ART index over hundreds of millions of points costs
gigabytes of memory and halves append speed. Idempotency is enforced by the store's anti-join on
``(series_id, ts)`` restricted to the batch's time range instead (see :mod:`ingest.store`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


_ROLLUP = """
CREATE TABLE IF NOT EXISTS {name} (
    series_id BIGINT NOT NULL,
    ts TIMESTAMP NOT NULL,
    avg DOUBLE, min DOUBLE, max DOUBLE, sum DOUBLE, count BIGINT, last DOUBLE
);
"""
# a histogram rollup row holds the *increments* of one series in one bucket (reset-aware, see
# ``ingest.queries.histogram_increments_sql``): per bucket of ``bounds`` (the last, +Inf, included), of the sum
# and of the count of observations; a series whose bounds changed inside a bucket has one row per layout
_HISTOGRAM_ROLLUP = """
CREATE TABLE {name} (
    series_id BIGINT NOT NULL,
    ts TIMESTAMP NOT NULL,
    bounds DOUBLE[] NOT NULL, counts DOUBLE[] NOT NULL, sum DOUBLE, count DOUBLE
);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "telemetry tables",
        """
        CREATE TABLE series (
            series_id BIGINT PRIMARY KEY,
            metric VARCHAR NOT NULL,
            service VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            unit VARCHAR,
            labels MAP(VARCHAR, VARCHAR) NOT NULL,
            first_seen TIMESTAMP DEFAULT (now()::TIMESTAMP)
        );
        CREATE TABLE points (series_id BIGINT NOT NULL, ts TIMESTAMP NOT NULL, value DOUBLE NOT NULL);
        CREATE TABLE histograms (
            series_id BIGINT NOT NULL, ts TIMESTAMP NOT NULL,
            count DOUBLE, sum DOUBLE, min DOUBLE, max DOUBLE,
            bounds DOUBLE[] NOT NULL, counts DOUBLE[] NOT NULL, cumulative BOOLEAN NOT NULL
        );
        CREATE TABLE spans (
            trace_id VARCHAR NOT NULL, span_id VARCHAR NOT NULL, parent_span_id VARCHAR,
            service VARCHAR NOT NULL, name VARCHAR, kind VARCHAR, start TIMESTAMP NOT NULL,
            duration DOUBLE, status VARCHAR, status_message VARCHAR,
            tenant VARCHAR, model VARCHAR, provider VARCHAR, operation VARCHAR,
            input_tokens BIGINT, output_tokens BIGINT, ttft DOUBLE,
            attributes MAP(VARCHAR, VARCHAR), resource MAP(VARCHAR, VARCHAR), events VARCHAR
        );
        CREATE TABLE logs (
            log_id VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, service VARCHAR NOT NULL,
            severity VARCHAR, severity_number INTEGER, body VARCHAR,
            trace_id VARCHAR, span_id VARCHAR, tenant VARCHAR,
            attributes MAP(VARCHAR, VARCHAR), template_id VARCHAR
        );
        CREATE TABLE events (
            event_id VARCHAR PRIMARY KEY, ts TIMESTAMP NOT NULL, service VARCHAR NOT NULL,
            kind VARCHAR NOT NULL, title VARCHAR, attributes MAP(VARCHAR, VARCHAR)
        );
        CREATE TABLE topology_edges (
            source VARCHAR NOT NULL, target VARCHAR NOT NULL, origin VARCHAR NOT NULL, ts TIMESTAMP,
            PRIMARY KEY (source, target, origin)
        );
        CREATE SEQUENCE ingest_rejects_seq;
        CREATE TABLE ingest_rejects (
            reject_id BIGINT DEFAULT nextval('ingest_rejects_seq'),
            received TIMESTAMP NOT NULL, source VARCHAR, location VARCHAR, reason VARCHAR NOT NULL,
            raw BLOB
        );
        """,
    ),
    Migration(
        2,
        "rollups for retention",
        _ROLLUP.format(name="points_5m") + _ROLLUP.format(name="points_1h"),
    ),
    Migration(
        3,
        "result tables (filled by detectors, rca, forecasting and alerting)",
        """
        CREATE TABLE anomalies (
            series_id BIGINT NOT NULL, ts TIMESTAMP NOT NULL, detector VARCHAR NOT NULL,
            score DOUBLE, is_anomaly BOOLEAN, expected DOUBLE, lower DOUBLE, upper DOUBLE
        );
        CREATE TABLE incidents (
            id VARCHAR PRIMARY KEY, service VARCHAR, metric VARCHAR, labels MAP(VARCHAR, VARCHAR),
            start TIMESTAMP, "end" TIMESTAMP, severity VARCHAR, status VARCHAR,
            causes VARCHAR, updated TIMESTAMP
        );
        CREATE TABLE forecasts (
            series_id BIGINT NOT NULL, ts TIMESTAMP NOT NULL, yhat DOUBLE,
            lo80 DOUBLE, hi80 DOUBLE, lo95 DOUBLE, hi95 DOUBLE, model VARCHAR, created TIMESTAMP
        );
        CREATE TABLE alert_outbox (
            id VARCHAR PRIMARY KEY, incident_id VARCHAR, receiver VARCHAR NOT NULL, payload VARCHAR,
            status VARCHAR NOT NULL, attempts INTEGER DEFAULT 0, next_attempt TIMESTAMP,
            last_error VARCHAR, created TIMESTAMP, delivered TIMESTAMP
        );
        """,
    ),
)

MIGRATIONS += (
    Migration(
        4,
        "idempotent dead letter: a re-ingested bad record is stored once",
        """
        ALTER TABLE ingest_rejects ADD COLUMN reject_key VARCHAR;
        UPDATE ingest_rejects SET reject_key = md5(concat_ws('|', source, location, reason, hex(raw)));
        """,
    ),
)

MIGRATIONS += (
    Migration(
        5,
        "detection state: fitted detector and alarm state per series, incidents' affected series",
        """
        CREATE TABLE detector_state (
            series_id BIGINT PRIMARY KEY, detector VARCHAR NOT NULL, state BLOB, alarm BLOB,
            scored_until TIMESTAMP, fitted_until TIMESTAMP, updated TIMESTAMP
        );
        CREATE TABLE incident_series (
            incident_id VARCHAR NOT NULL, series_id BIGINT NOT NULL, metric VARCHAR, labels MAP(VARCHAR, VARCHAR),
            start TIMESTAMP, last TIMESTAMP, peak DOUBLE, active BOOLEAN,
            PRIMARY KEY (incident_id, series_id)
        );
        ALTER TABLE incidents ADD COLUMN peak DOUBLE;
        CREATE INDEX anomalies_series_ts ON anomalies (series_id, ts);
        """,
    ),
)

MIGRATIONS += (
    Migration(
        6,
        "capacity reports: each report's daily demand forecasts per resource, to score them against what happened",
        """
        CREATE TABLE capacity_forecasts (
            report_id VARCHAR NOT NULL, created TIMESTAMP NOT NULL, resource VARCHAR NOT NULL, unit VARCHAR,
            ts TIMESTAMP NOT NULL, yhat DOUBLE, lo80 DOUBLE, hi80 DOUBLE, lo95 DOUBLE, hi95 DOUBLE, model VARCHAR,
            PRIMARY KEY (report_id, resource, ts)
        );
        """,
    ),
)

MIGRATIONS += (
    Migration(
        7,
        "alert outbox: dedup key, event, per-key sequence, group key, deadline, last attempt",
        # the row id is a hash of (receiver, dedup_key, event, seq), so the primary key alone makes enqueueing
        # idempotent; no secondary index, which DuckDB would make block later ALTERs of this table
        """
        ALTER TABLE alert_outbox ADD COLUMN dedup_key VARCHAR;
        ALTER TABLE alert_outbox ADD COLUMN event VARCHAR;
        ALTER TABLE alert_outbox ADD COLUMN seq INTEGER;
        ALTER TABLE alert_outbox ADD COLUMN group_key VARCHAR;
        ALTER TABLE alert_outbox ADD COLUMN dead_after TIMESTAMP;
        ALTER TABLE alert_outbox ADD COLUMN last_attempt TIMESTAMP;
        """,
    ),
)

MIGRATIONS += (
    Migration(
        8,
        "alerting: silences, and the current hold (silence or inhibition) of each incident's notifications",
        """
        CREATE TABLE silences (
            id VARCHAR PRIMARY KEY, matchers VARCHAR NOT NULL, starts_at TIMESTAMP NOT NULL,
            ends_at TIMESTAMP NOT NULL, created_by VARCHAR, comment VARCHAR, created TIMESTAMP NOT NULL
        );
        CREATE TABLE alert_holds (
            incident_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, source_id VARCHAR, reason VARCHAR,
            since TIMESTAMP NOT NULL, updated TIMESTAMP NOT NULL
        );
        """,
    ),
)

MIGRATIONS += (
    Migration(
        9,
        "rollups of recent data: how far raw points are rolled up, and the late arrivals to roll up again",
        """
        CREATE TABLE rollup_state (
            id INTEGER PRIMARY KEY, raw_from TIMESTAMP, rolled_to TIMESTAMP, updated TIMESTAMP
        );
        CREATE TABLE rollup_dirty (series_id BIGINT NOT NULL, hour TIMESTAMP NOT NULL);
        """,
    ),
    Migration(
        10,
        "histogram rollups: bucket increments per 5 minutes and per hour, and how far they reach",
        _HISTOGRAM_ROLLUP.format(name="histograms_5m")
        + _HISTOGRAM_ROLLUP.format(name="histograms_1h")
        + "ALTER TABLE rollup_state ADD COLUMN histograms_to TIMESTAMP;",
    ),
)

LATEST = MIGRATIONS[-1].version
