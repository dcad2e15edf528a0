"""``[[receivers]]`` / ``[[routes]]`` parsing and ``rootwise config check``."""

from __future__ import annotations

import json
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from app.alerts.config import AlertConfigError, RouteConfig, alerting_from_config, parse_duration
from app.cli import main
from app.config import ConfigError, Secret, load_config

PD_KEY = "pdkey-0123456789abcdef0123456789ab"
OG_KEY = "og-11111111-2222-3333-4444-555555555555"
WH_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, the Standard Webhooks example format
SLACK_URL = "https://hooks.slack.example/services/T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX"

GOOD = """
[server]
token = "${RW_TOKEN}"

[[receivers]]
name = "pd"
type = "pagerduty"
routing_key = "${RW_PD_KEY}"

[[receivers]]
name = "chat"
type = "slack"
url = "${RW_SLACK_URL}"

[[receivers]]
name = "og"
type = "opsgenie"
api_key = "${RW_OG_KEY}"
url = "https://api.eu.opsgenie.com"
deadline = "12h"

[[receivers]]
name = "oncall"
type = "webhook"
url = "http://127.0.0.1:9000/hook"
secret = "${RW_WEBHOOK_SECRET}"
rate_limit_per_minute = 30

[[routes]]
receiver = "pd"
match = { severity = "page" }
group_by = ["service"]
continue = true

[[routes]]
receiver = "chat"
group_wait = "10s"

[[slos]]
name = "api"
objective = 0.999
bad_metric = "errors"
total_metric = "requests"
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RW_TOKEN", "tok-abcdef")
    monkeypatch.setenv("RW_PD_KEY", PD_KEY)
    monkeypatch.setenv("RW_OG_KEY", OG_KEY)
    monkeypatch.setenv("RW_SLACK_URL", SLACK_URL)
    monkeypatch.setenv("RW_WEBHOOK_SECRET", WH_SECRET)


def _extra(text: str) -> dict:
    return {k: v for k, v in tomllib.loads(text).items() if k not in ("server", "ingest", "scrape")}


def test_good_config_parses_with_defaults_and_hidden_secrets(env: None) -> None:
    cfg = alerting_from_config(_extra(GOOD))
    assert list(cfg.receivers) == ["pd", "chat", "og", "oncall"]
    pd, chat, og, hook = (cfg.receivers[n] for n in ("pd", "chat", "og", "oncall"))
    assert pd.routing_key == Secret(PD_KEY) and pd.url.reveal() == "https://events.pagerduty.com/v2/enqueue"
    assert pd.rate_limit_per_minute == 120 and chat.rate_limit_per_minute == 60
    assert hook.rate_limit_per_minute == 30 and hook.secret is not None and hook.secret.reveal() == WH_SECRET
    assert og.deadline == timedelta(hours=12) and pd.deadline == timedelta(hours=24)
    assert (
        og.url_display == "https://api.eu.opsgenie.com" and chat.url_display == "https://hooks.slack.example"
    )
    r0, r1 = cfg.routes
    assert r0.match == {"severity": "page"} and r0.group_by == ("service",) and r0.continue_
    assert (r0.group_wait, r0.group_interval, r0.repeat_interval) == (
        timedelta(seconds=30),
        timedelta(minutes=5),
        timedelta(hours=4),
    )
    assert r1.group_wait == timedelta(seconds=10)
    text = repr(cfg) + str(cfg)
    for secret in (PD_KEY, OG_KEY, WH_SECRET, SLACK_URL, "XXXXXXXXXXXXXXXXXXXXXXXX", "/services/T0001"):
        assert secret not in text


def test_routing_first_match_wins_unless_continue(env: None) -> None:
    cfg = alerting_from_config(_extra(GOOD))
    assert [r.name for r, _ in cfg.route({"severity": "page", "service": "api"})] == ["pd", "chat"]
    assert [r.name for r, _ in cfg.route({"severity": "ticket"})] == ["chat"]
    no_routes = alerting_from_config({"receivers": _extra(GOOD)["receivers"]})
    assert [r.name for r, _ in no_routes.route({})] == ["pd", "chat", "og", "oncall"]
    assert (
        RouteConfig("x", {}, ("service", "model")).group_key({"service": "a"})
        == '{}/{}:{service="a",model=""}'
    )


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"name": "a", "type": "webhook", "url": "not a url"}, "receivers[1].url: expected an http(s) URL"),
        ({"name": "a", "type": "webhook", "url": "ftp://h/x"}, "receivers[1].url: expected an http(s) URL"),
        ({"name": "a", "type": "webhook"}, "receivers[1].url: required for a webhook receiver"),
        ({"name": "a", "type": "sms", "url": "http://h/"}, "receivers[1].type: expected one of pagerduty"),
        (
            {"name": "a", "type": "slack", "url": "http://h/", "routing_key": "x"},
            "receivers[1]: unknown key 'routing_key'",
        ),
        ({"name": "a b", "type": "slack", "url": "http://h/"}, "receivers[1].name: expected 1-64 characters"),
        ({"name": "a", "type": "pagerduty"}, "receivers[1].routing_key: required"),
        (
            {"name": "a", "type": "opsgenie", "api_key": "${RW_UNSET_VAR}"},
            "environment variable RW_UNSET_VAR is not set",
        ),
        (
            {"name": "a", "type": "webhook", "url": "http://h/", "deadline": "soon"},
            "receivers[1].deadline: expected a duration",
        ),
        (
            {"name": "a", "type": "webhook", "url": "http://h/", "rate_limit_per_minute": 0},
            "receivers[1].rate_limit_per_minute",
        ),
        (
            {"name": "ok", "type": "webhook", "url": "http://h/"},
            "receivers[1].name: duplicate receiver name 'ok'",
        ),
    ],
)
def test_receiver_errors_name_the_key(table: dict, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RW_UNSET_VAR", raising=False)
    first = {"name": "ok", "type": "webhook", "url": "http://127.0.0.1:1/"}
    with pytest.raises(AlertConfigError) as err:
        alerting_from_config({"receivers": [first, table]})
    assert expected in str(err.value)


def test_secret_errors_never_echo_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RW_BAD_WHSEC", "whsec_c2hvcnQ=")  # valid base64, only 5 bytes
    monkeypatch.setenv("RW_NOT_WHSEC", "hunter2-not-a-standard-secret")
    tables = [
        {"name": "inline", "type": "pagerduty", "routing_key": "inline-secret-value-123456"},
        {"name": "short", "type": "webhook", "url": "http://h/", "secret": "${RW_BAD_WHSEC}"},
        {"name": "prefix", "type": "webhook", "url": "http://h/", "secret": "${RW_NOT_WHSEC}"},
        {"name": "slack", "type": "slack", "url": "https://user:pw-secret-1234@hooks.example/T/B/tok"},
    ]
    with pytest.raises(AlertConfigError) as err:
        alerting_from_config({"receivers": tables})
    msg = str(err.value)
    assert len(err.value.errors) == 4, msg
    assert "receivers[0].routing_key: write secrets as" in msg
    assert "receivers[1].secret: the key must decode to 24-64 bytes, got 5" in msg
    assert "receivers[2].secret: expected a Standard Webhooks secret" in msg
    assert "receivers[3].url: credentials in the URL are not supported" in msg
    for secret in (
        "inline-secret-value-123456",
        "c2hvcnQ",
        "hunter2",
        "pw-secret-1234",
        "hooks.example/T/B/tok",
    ):
        assert secret not in msg


def test_route_errors() -> None:
    receivers = [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:1/"}]
    routes = [
        {"receiver": "nope"},
        {"receiver": "hook", "match": {"severity": 1}},
        {"receiver": "hook", "group_wait": "5 minutes"},
        {"receiver": "hook", "matchers": {}},
    ]
    with pytest.raises(AlertConfigError) as err:
        alerting_from_config({"receivers": receivers, "routes": routes})
    errors = err.value.errors
    assert errors[0] == "routes[0].receiver: no receiver named 'nope' (receivers: hook)"
    assert errors[1].startswith("routes[1].match: expected a table of label")
    assert errors[2].startswith("routes[2].group_wait: expected a duration")
    assert errors[3].startswith("routes[3]: unknown key 'matchers'")


def test_parse_duration() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    for typo in ("2h2h", "30m1h", "h", ""):  # each unit once, largest first (2h2h was read as 4 h)
        with pytest.raises(ValueError, match="each unit once"):
            parse_duration(typo)
    assert parse_duration("250ms") == timedelta(milliseconds=250)
    with pytest.raises(ValueError):
        parse_duration("30")


# -- rootwise config check -------------------------------------------------------------------------------
def test_config_check_good_file(env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rootwise.toml"
    path.write_text(GOOD)
    assert main(["config", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {path}") and "4 receivers" in out and "2 routes" in out and "1 slos" in out
    assert main(["config", "check", "--config", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["errors"] == []


def test_config_check_bad_file_lists_every_error(
    env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        GOOD.replace('url = "http://127.0.0.1:9000/hook"', 'url = "localhost:9000"')
        + '\n[capacity]\nhorizon = 60\n\n[[slos]]\nname = "x"\nobjetive = 0.9\n\n[[routes]]\nreceiver = "ghost"\n'
    )
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert any("receivers[3].url: expected an http(s) URL" in e for e in err)
    assert any("capacity: unknown key 'horizon'" in e for e in err)
    assert any("slos[1]: unknown key 'objetive'" in e for e in err)
    assert any("routes[2].receiver: no receiver named 'ghost'" in e for e in err)
    assert all(e.startswith(f"rootwise: error: {path}: ") for e in err)
    assert not any(s in "\n".join(err) for s in (PD_KEY, OG_KEY, WH_SECRET, SLACK_URL))


def test_config_check_lists_server_ingest_and_scrape_errors_with_the_rest(
    env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A problem in the server, ingest or scrape settings no longer hides the others, nor those of the other
    tables: ``config check`` names each (it stopped at the first, and checked nothing else)."""
    path = tmp_path / "bad.toml"
    path.write_text(
        "[ingest]\nmax_body_bytes = 0\n\n"
        '[[scrape]]\nurl = "localhost:9100/metrics"\n\n[[scrape]]\nurl = "http://127.0.0.1:9100/metrics"\n'
        "interval_s = 0\n\n[sever]\n\n"
        + GOOD.replace('token = "${RW_TOKEN}"', 'tokn = "${RW_TOKEN}"')
        + '\n[[routes]]\nreceiver = "ghost"\n'
    )
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    for problem in (
        "unknown table 'sever'",
        "server: unknown key 'tokn'",
        "ingest.max_body_bytes: expected a positive integer, got 0",
        "scrape[0].url: expected an http(s) URL",
        "scrape[1].interval_s: expected a positive number of seconds",
        "routes[2].receiver: no receiver named 'ghost'",
    ):
        assert sum(problem in e for e in err) == 1, problem
    assert all(e.startswith(f"rootwise: error: {path}: ") for e in err)
    with pytest.raises(ConfigError) as exc:  # serve refuses the file with every problem, one per line
        load_config(path)
    assert len(exc.value.problems) == 5 and str(exc.value).count("\n") == 4


def test_config_check_missing_and_invalid_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[[receivers]\nname = 1\n")
    assert main(["config", "check", "--config", str(bad), "--format", "json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and "not valid TOML" in data["errors"][0]
