"""CLI behaviour that scripts rely on: fast start, clear errors, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main, parse_duration
from app.config import ConfigError, Secret, load_config

HEAVY = ("polars", "duckdb", "dash", "prophet", "sklearn", "statsmodels", "plotly", "flask")


def test_help_imports_no_heavy_module():
    code = (
        "import sys, contextlib, io\n"
        "from app.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", ["demo", "simulate", "ingest", "serve", "retention", "bench"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: rootwise" in capsys.readouterr().out


def test_ingest_missing_path_is_a_clear_error(tmp_path, capsys):
    code = main(["ingest", str(tmp_path / "nope.parquet"), "--db", str(tmp_path / "x.duckdb")])
    assert code == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    assert main(["ingest", str(tmp_path / "empty"), "--db", str(tmp_path / "x.duckdb")]) == 2
    assert f"no input files found in {tmp_path / 'empty'}" in capsys.readouterr().err


def test_parse_duration_rejects_garbage():
    import argparse

    assert parse_duration("15m").total_seconds() == 900
    with pytest.raises(argparse.ArgumentTypeError, match="expected a duration"):
        parse_duration("fortnight")


def test_config_resolves_env_secrets_and_never_prints_them(tmp_path, monkeypatch):
    monkeypatch.setenv("RW_TEST_TOKEN", "s3cret-value")
    cfg = tmp_path / "rootwise.toml"
    cfg.write_text('[server]\ntoken = "${RW_TEST_TOKEN}"\n[ingest]\ntenant_attribute = "org.id"\n'
                   '[[scrape]]\nurl = "http://127.0.0.1:9400/metrics"\nservice = "gpu"\n')
    c = load_config(cfg)
    assert isinstance(c.token, Secret) and c.token.reveal() == "s3cret-value"
    assert "s3cret-value" not in repr(c) and "s3cret-value" not in str(c)
    assert c.tenant_attribute == "org.id"
    assert c.scrape[0].service == "gpu"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\ntoken = "${RW_UNSET_VARIABLE_X}"\n', "RW_UNSET_VARIABLE_X is not set"),
        ("[ingest]\nmax_body_bytes = 'big'\n", "ingest.max_body_bytes: expected int"),
        ('[[scrape]]\nurl = "ftp://x"\n', "scrape[0].url: expected an http(s) URL"),
        ("[server\n", "not valid TOML"),
        # a misspelt key or table is an error, not a setting silently ignored
        ('[server]\ntokn = "${RW_TEST_TOKEN}"\n', "server: unknown key 'tokn'; expected one of token"),
        ("[ingest]\ntenant_atribute = 'org'\n", "ingest: unknown key 'tenant_atribute'"),
        ('[[scrape]]\nurl = "http://127.0.0.1:9/metrics"\nintreval_s = 5\n', "scrape[0]: unknown key 'intreval_s'"),
        ('[[scrape]]\nurl = "http://127.0.0.1:9/metrics"\ninterval_s = -5\n', "scrape[0].interval_s: expected a positive"),
        ('[[route]]\nreceiver = "pager"\n', "unknown table 'route'"),
        ("[apps]\n", "unknown table 'apps'"),
        # secrets live in the environment, never inline (and the value is not echoed)
        ('[server]\ntoken = "plaintext-secret-123"\n', 'server.token: write secrets as "${ENV_VAR}" references'),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, message):
    cfg = tmp_path / "rootwise.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config(cfg)
    assert "plaintext-secret-123" not in str(err.value)


def test_config_check_rejects_a_misspelt_table_and_a_directory(tmp_path, capsys):
    cfg = tmp_path / "rootwise.toml"
    cfg.write_text('[[route]]\nreceiver = "pager"\n')
    assert main(["config", "check", "--config", str(cfg)]) == 2
    assert "unknown table 'route'" in capsys.readouterr().err
    assert main(["config", "check", "--config", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_store_held_by_another_process_is_explained(tmp_path):
    db = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"from ingest.store import Store; s = Store({str(db)!r}); print('ready', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        out = subprocess.run([sys.executable, "-m", "app.cli", "retention", "--db", str(db), "--format", "json"],
                             capture_output=True, text=True)
        assert out.returncode == 2
        assert "held by another process" in out.stderr and "/v1/metrics" in out.stderr
        # a read command is told where the server gives the same answer
        out = subprocess.run([sys.executable, "-m", "app.cli", "incidents", "--db", str(db)],
                             capture_output=True, text=True)
        assert out.returncode == 2 and "GET /api/v1/incidents" in out.stderr
    finally:
        holder.communicate("\n", timeout=30)


def test_retention_json_output(tmp_path, capsys):
    pytest.importorskip("ingest.retention")
    assert main(["retention", "--db", str(tmp_path / "r.duckdb"), "--raw-max-age", "7d", "--format", "json"]) == 0
    assert "cutoff" in json.loads(capsys.readouterr().out)


def test_db_path_created(tmp_path):
    db = tmp_path / "sub" / "dir" / "x.duckdb"
    from ingest.store import Store

    Store(db).close()
    assert Path(db).exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "--out", "x", "--days", "0"], "--days: expected a positive number, got '0'"),
        (["simulate", "--out", "x", "--scale", "nan"], "--scale: expected a positive number, got 'nan'"),
        (["demo", "--days", "-1"], "--days: expected a positive number"),
        (["retention", "--raw-max-age", "0d"], "--raw-max-age: expected a duration of at least 1s, got '0d'"),
        (["retention", "--logs-max-age", "0.0h"], "--logs-max-age: expected a duration of at least 1s"),
        (["forecast", "--horizon", "6", "--step", "0.4s"], "--step: expected a duration of at least 1s"),
        (["forecast", "--horizon", "0"], "--horizon: expected a whole number >= 1, got '0'"),
        (["incidents", "--limit", "-1"], "--limit: expected a whole number >= 1, got '-1'"),
        (["score", "f.csv", "--threshold", "nan"], "--threshold: expected a finite number, got 'nan'"),
        (["serve", "--decode-workers", "-1"], "--decode-workers: expected a whole number >= 0"),
        (["serve", "--port", "70000"], "--port: expected a TCP port 0-65535"),
    ],
)
def test_bad_option_values_are_usage_errors(argv, message, capsys):
    """Values that mean nothing (a zero age or step, negative days) are refused by name with exit 2 before
    anything runs; they used to surface as tracebacks (a Rust panic for a step of 0s)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_options_are_checked_before_the_run(tmp_path, capsys):
    """A bad --params, --loco or --detector is reported at once, by name (not after scoring all of NAB, and not
    as a traceback)."""
    from app.cli import _shared_data

    if not (_shared_data() / "NAB" / "labels" / "combined_windows.json").exists():
        pytest.skip("NAB is not in ../shared/data")
    cases = [
        (["--params", "{bad"], "--params: not valid JSON"),
        (["--params", '{"nope": 1}'], "--params: StreamingDetector.__init__() got an unexpected keyword argument 'nope'"),
        (["--loco", '{"tail_q": 0.99}'], "--loco: expected lists of values to try"),
        (["--detector", "nope"], "unknown detector 'nope'"),
    ]
    for extra, message in cases:
        assert main(["eval", "nab", "--out", str(tmp_path / "x.json"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    assert main(["eval", "incidents", "--data", str(tmp_path)]) == 2
    assert "not a simulator output (manifest.json missing" in capsys.readouterr().err


def test_simulate_into_a_file_and_a_closed_pipe(tmp_path, capsys):
    f = tmp_path / "out"
    f.write_text("")
    assert main(["simulate", "--out", str(f)]) == 2
    assert "is a file, expected a folder" in capsys.readouterr().err
    # a reader that goes away (| head) ends the command quietly, without a traceback
    data = tmp_path / "s.csv"
    data.write_text("timestamp,value\n" + "".join(f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d},{i % 7}\n" for i in range(3000)))
    proc = subprocess.run(
        f"{sys.executable} -m app.cli score {data} --format json | head -c 10",
        shell=True, capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout == '[{"timesta' and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_incidents_csv_of_no_incidents_has_its_header(tmp_path, capsys):
    from ingest.results import INCIDENT_FIELDS, list_incidents
    from ingest.store import Store

    db = tmp_path / "e.duckdb"
    Store(db).close()
    assert main(["incidents", "--db", str(db), "--format", "csv"]) == 0
    assert capsys.readouterr().out == ",".join(INCIDENT_FIELDS) + "\n"
    with Store(db, read_only=True) as s:
        assert list_incidents(s) == []
