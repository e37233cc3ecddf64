"""Session settings: the --proposer spec, claude settings and price tables, and how
`threadlab run` and `status` use them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config import SessionConfig, parse_proposers, threads_for
from engine.errors import ThreadlabError
from engine.proposers.claude import DEFAULT_MODEL, build_claude_extra, settings_from_extra
from engine.proposers.prices import DEFAULT_PRICES, ModelPrice, load_prices_file, merged_prices, price_for, usage_cost

from tests.conftest import assert_clean_error, make_task, threadlab, wait_for
from tests.test_claude_proposer import FakeMessages


def test_a_mixed_spec_runs_its_counts_of_each_proposer():
    spec = parse_proposers("claude:2,search:2", 0)
    assert spec == (("claude", 2), ("search", 2))
    threads = threads_for(spec, None)
    assert threads == 4
    config = SessionConfig(task="t", profile="p", threads=threads, proposers=spec)
    assert [config.proposer_for(i) for i in range(4)] == ["claude", "claude", "search", "search"]
    assert SessionConfig.from_dict(config.to_dict()) == config
    # An explicit --threads wins; a proposer without a count takes the rest.
    assert threads_for(spec, 6) == 6
    rest = parse_proposers("watch:1,search", 3)
    assert [SessionConfig("t", "p", threads=3, proposers=rest).proposer_for(i) for i in range(3)] == \
        ["watch", "search", "search"]
    assert threads_for(parse_proposers("search", 0), None) == 2


def test_an_unknown_proposer_names_the_known_ones():
    with pytest.raises(ThreadlabError) as err:
        parse_proposers("gpt:1", 2)
    assert err.value.hint == "available: search, claude, watch"
    with pytest.raises(ThreadlabError, match="more threads than --threads 2"):
        parse_proposers("claude:2,search:2", 2)


def test_claude_settings_come_from_a_file_and_flags(tmp_path):
    path = tmp_path / "claude.toml"
    path.write_text('''
[claude]
model = "claude-opus-5"
max_tokens = 12000
spend_cap_usd = 25.0

[claude.threads.t2]
model = "claude-sonnet-4-6"
temperature = 0.4

[prices."my-proxy-model"]
input = 1.0
output = 2.0
cache_write_5m = 1.25
cache_write_1h = 2.0
cache_read = 0.1
''')
    extra = build_claude_extra(path, max_tokens=9000, model=None)
    defaults, per_thread, prices = settings_from_extra({"claude": extra})
    assert (defaults.model, defaults.max_tokens, defaults.spend_cap_usd) == ("claude-opus-5", 9000, 25.0)
    assert (per_thread["t2"].model, per_thread["t2"].temperature, per_thread["t2"].max_tokens) == \
        ("claude-sonnet-4-6", 0.4, 9000)
    assert prices["my-proxy-model"] == ModelPrice(1.0, 2.0, 1.25, 2.0, 0.1)
    assert prices[DEFAULT_MODEL] == DEFAULT_PRICES[DEFAULT_MODEL]

    path.write_text('[claude]\ncache_ttl = "1d"\n')
    with pytest.raises(ThreadlabError, match="cache_ttl"):
        build_claude_extra(path)


def test_price_tables(tmp_path, monkeypatch):
    assert price_for("claude-sonnet-4-5-20250929", DEFAULT_PRICES) == DEFAULT_PRICES["claude-sonnet-4-5"]
    assert price_for("claude-unknown-1", DEFAULT_PRICES) is None
    # One million of each kind of token costs the sum of the five prices.
    million = {k: 1_000_000 for k in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                                      "cache_write_5m_tokens", "cache_write_1h_tokens")}
    assert usage_cost(million, ModelPrice(1, 2, 3, 4, 5)) == 15
    table = tmp_path / "prices.toml"
    table.write_text('[prices."claude-sonnet-5-5"]\ninput = 2.5\noutput = 10\n')
    with pytest.raises(ThreadlabError, match=r"prices.claude-sonnet-5-5 lacks cache_write_5m"):
        load_prices_file(table)
    table.write_text('[prices."claude-sonnet-5-5"]\ninput = 2.5\noutput = 10\ncache_write_5m = 3\n'
                     'cache_write_1h = 5\ncache_read = 0.25\n')
    monkeypatch.setenv("THREADLAB_PRICES", str(table))
    assert merged_prices()[DEFAULT_MODEL].input == 2.5


def test_run_with_claude_needs_the_key_and_a_price(tmp_path, monkeypatch):
    task = make_task(tmp_path / "bowl")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    r = threadlab("run", task, "--proposer", "claude:2,search:2", "--no-tui", "--db", tmp_path / "a.db", cwd=tmp_path)
    assert_clean_error(r, "ANTHROPIC_API_KEY is not set")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0000000000000000")
    r = threadlab("run", task, "--proposer", "claude", "--claude-model", "claude-nonexistent-9", "--no-tui",
                  "--db", tmp_path / "b.db", cwd=tmp_path)
    assert_clean_error(r, "no price for model 'claude-nonexistent-9'")
    assert not (tmp_path / "a.db").exists() and not (tmp_path / "b.db").exists()


async def test_status_shows_both_kinds_of_a_mixed_session(tmp_path, monkeypatch, processes):
    api = FakeMessages()  # holds every request open: the claude threads think until stopped
    try:
        key = "sk-ant-test-" + "5" * 32
        monkeypatch.setenv("ANTHROPIC_API_KEY", key)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        task = make_task(tmp_path / "bowl")
        db = tmp_path / "state.db"
        r = threadlab("run", task, "--proposer", "claude:2,search:2", "--detach", "--spend-cap", "5",
                      "--db", db, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        pid = int(re.search(r"engine started \(pid (\d+)\)", r.stdout).group(1))
        processes.adopt(pid)
        await wait_for(lambda: len(api.messages()) >= 2, 30, "both claude threads to ask Claude")
        out = threadlab("status", "--db", db)
        assert out.returncode == 0, out.stderr
        rows = [[c.strip() for c in ln.split("│")[1:4]] for ln in out.stdout.splitlines() if ln.startswith("│")]
        assert sorted((row[1], row[2]) for row in rows) == [
            ("t1", "claude"), ("t2", "claude"), ("t3", "search"), ("t4", "search")], out.stdout
        stop = threadlab("stop", "--db", db)
        assert stop.returncode == 0, stop.stderr
        assert key.encode() not in Path(db).read_bytes()
        assert key not in (tmp_path / "state.run" / "engine.log").read_text()
    finally:
        api.close()
