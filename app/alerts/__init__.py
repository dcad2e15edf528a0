"""Alert delivery: receivers and routes (:mod:`.config`), one notifier per target (:mod:`.pagerduty`,
:mod:`.slack`, :mod:`.opsgenie`, :mod:`.webhook`, listed in :data:`.notifiers.NOTIFIERS`), and the outbox that
delivers at least once with retries, rate limits and deadlines (:mod:`.outbox`; its SQL is in
:mod:`ingest.alerts_store`).

Typical wiring (the scheduler of ``rootwise serve``)::

    config = alerting_from_config(load_config(path).extra)
    notifiers = build_notifiers(config)
    limiter, rng = RateLimiter(), random.Random(seed)
    for incident in changed_incidents:          # after detection and RCA
        enqueue_incident(store, incident, config, now=now)
    deliver_due(store, notifiers, now, rng=rng, limiter=limiter)
"""
