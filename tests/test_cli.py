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
