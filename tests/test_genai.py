"""GenAI semantic conventions: old and new attribute names end up as the same labels and columns."""

from __future__ import annotations

import orjson

from ingest.genai import canonical_labels, span_columns
from ingest.otlp import decode_otlp_json

T0 = 1_700_000_000_000_000_000

OLD = {
    "gen_ai.system": "az.ai.openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.operation.name": "chat",
    "gen_ai.token.type": "completion",
    "gen_ai.usage.prompt_tokens": "120",
    "gen_ai.usage.completion_tokens": "48",
    "server.address": "api.example.com",
}
NEW = {
    "gen_ai.provider.name": "azure.ai.openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.operation.name": "chat",
    "gen_ai.token.type": "output",
    "gen_ai.usage.input_tokens": "120",
    "gen_ai.usage.output_tokens": "48",
    "server.address": "api.example.com",
}


def test_old_and_new_names_give_the_same_labels():
    old = canonical_labels({k: v for k, v in OLD.items() if "usage" not in k})
    new = canonical_labels({k: v for k, v in NEW.items() if "usage" not in k})
    assert (
        old
        == new
        == {
            "model": "gpt-4o",
            "provider": "azure.ai.openai",
            "operation": "chat",
            "token_type": "output",
            "server.address": "api.example.com",
        }
    )


def test_unmapped_attributes_are_kept_and_input_is_not_mutated():
    attrs = {"gen_ai.request.temperature": "0.2", "region": "eu", "gen_ai.request.model": "m"}
    out = canonical_labels(attrs)
    assert out == {"gen_ai.request.temperature": "0.2", "region": "eu", "model": "m"}
    assert attrs["gen_ai.request.model"] == "m"


def test_response_model_is_the_fallback_and_kept_when_request_model_exists():
    assert canonical_labels({"gen_ai.response.model": "gpt-4o-2024-08-06"}) == {"model": "gpt-4o-2024-08-06"}
    both = canonical_labels({"gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06"})
    assert both == {"model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06"}


def test_tenant_attribute_then_fallback():
    assert canonical_labels({"rootwise.tenant.id": "acme", "tenant": "other"}) == {"tenant": "acme"}
    assert canonical_labels({"tenant": "beta"}) == {"tenant": "beta"}
    assert canonical_labels({"org": "gamma"}, tenant_attribute="org") == {"tenant": "gamma"}


def test_new_provider_wins_over_old_system():
    assert canonical_labels({"gen_ai.provider.name": "openai", "gen_ai.system": "az.ai.openai"}) == {
        "provider": "openai"
    }


def test_span_columns_old_and_new_agree():
    old = span_columns(OLD, {"rootwise.tenant.id": "acme"})
    new = span_columns(NEW, {"rootwise.tenant.id": "acme"})
    assert old == new
    assert (old.tenant, old.model, old.provider, old.operation) == (
        "acme",
        "gpt-4o",
        "azure.ai.openai",
        "chat",
    )
    assert (old.input_tokens, old.output_tokens, old.ttft) == (120, 48, None)


def test_ttft_from_attribute_or_first_token_event():
    assert span_columns({"gen_ai.response.time_to_first_chunk": "0.25"}, {}).ttft == 250.0
    assert span_columns({"gen_ai.server.time_to_first_token": "1.5"}, {}).ttft == 1500.0
    events = [(T0 + 900_000_000, "other"), (T0 + 320_000_000, "gen_ai.first_token")]
    assert span_columns({}, {}, start_ns=T0, events=events).ttft == 320.0
    assert span_columns({"gen_ai.response.time_to_first_chunk": "nan"}, {}).ttft is None


def test_token_counts_tolerate_doubles_and_ignore_garbage():
    cols = span_columns({"gen_ai.usage.input_tokens": "12.0", "gen_ai.usage.output_tokens": "many"}, {})
    assert (cols.input_tokens, cols.output_tokens) == (12, None)


def _token_usage_payload(attrs: dict[str, str]) -> bytes:
    kvs = [{"key": k, "value": {"stringValue": v}} for k, v in attrs.items()]
    return orjson.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "chatbot"}}]
                    },
                    "scopeMetrics": [
                        {
                            "metrics": [
                                {
                                    "name": "gen_ai.client.token.usage",
                                    "unit": "{token}",
                                    "histogram": {
                                        "aggregationTemporality": 2,
                                        "dataPoints": [
                                            {
                                                "attributes": kvs,
                                                "timeUnixNano": str(T0),
                                                "count": "1",
                                                "sum": 48,
                                                "bucketCounts": ["0", "1"],
                                                "explicitBounds": [1],
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    )


def test_old_and_new_senders_write_the_same_series():
    labels = {k: v for k, v in OLD.items() if "usage" not in k}
    old = decode_otlp_json(_token_usage_payload(labels), "metrics", "t")
    new = decode_otlp_json(
        _token_usage_payload({k: v for k, v in NEW.items() if "usage" not in k}), "metrics", "t"
    )
    assert old.series.equals(new.series)
    assert old.histograms.equals(new.histograms)
    row = old.series.row(0, named=True)
    assert row["metric"] == "gen_ai.client.token.usage" and row["kind"] == "histogram"
    assert {d["key"]: d["value"] for d in row["labels"]}["token_type"] == "output"
