"""Adapters that turn public RCA benchmark data sets into Rootwise frames.

Each adapter yields cases whose telemetry has the columns of :mod:`ingest.schema` (so it can be written to a
store or wrapped in :class:`rca.base.FrameView`) and whose ground truth is a separate object: the analysers
never see the labels.
"""
