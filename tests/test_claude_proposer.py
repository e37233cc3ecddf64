"""The `claude` proposer through the real anthropic SDK, against a scripted local server.

FakeMessages is an HTTP server on 127.0.0.1 that speaks the one endpoint the proposer
uses, POST /v1/messages (non-streaming): each test scripts its replies (tool_use blocks,
usage with cache fields, errors with retry-after, slow answers, refusals). Once the script
is spent the server holds requests open (Claude "thinks" until the test ends), so nothing
unscripted happens. Each test runs a real Engine on the bowl fixture and asserts what it
recorded in state.db, and that the API key is nowhere in state.db or the logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from engine.config import SessionConfig
from engine.executor import LocalExecutor, detect_slots
from engine.loop import Engine
from engine.proposers.base import ProposalContext, ProposerError
from engine.proposers.claude import DEFAULT_MODEL, ClaudeProposer, ClaudeSettings, settings_from_extra
from engine.proposers.prices import DEFAULT_PRICES, usage_cost
from engine.store import Store
from engine.taskfile import load_task

from tests.conftest import EngineSession, _call_failed, make_task

GOOD_EDITS = """solution.py
<<<<<<< SEARCH
LR = 0.02
=======
LR = 0.05
>>>>>>> REPLACE
"""
BAD_EDITS = GOOD_EDITS.replace("LR = 0.02\n=", "LR = 0.01\n=")

# ---- the local Messages endpoint ----------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (longer than the client's timeout: a timeout)


def usage(inp: int = 1200, out: int = 300, read: int = 0, write_5m: int = 0, write_1h: int = 0) -> dict[str, Any]:
    return {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": read,
            "cache_creation_input_tokens": write_5m + write_1h,
            "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h}}


_ids = iter(range(1, 10_000))


def message(*content: dict[str, Any], stop: str = "tool_use", use: dict[str, Any] | None = None) -> Reply:
    return Reply(body={"id": f"msg_{next(_ids)}", "type": "message", "role": "assistant", "model": DEFAULT_MODEL,
                       "content": list(content), "stop_reason": stop, "stop_sequence": None,
                       "usage": use or usage()})


def tool(name: str, data: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{next(_ids)}", "name": name, "input": data}


def submit(edits: str = GOOD_EDITS, title: str = "larger step", use: dict[str, Any] | None = None) -> Reply:
    return message({"type": "thinking", "thinking": "a larger step should converge faster", "signature": "c2ln"},
                   {"type": "text", "text": "Raising the learning rate."},
                   tool("submit_proposal", {"title": title, "hypothesis": "the bowl is ill-conditioned; a larger "
                                            "step converges further in 40 steps", "edits": edits}), use=use)


def error(status: int, kind: str, text: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"type": "error", "error": {"type": kind, "message": text}}, headers or {})


class FakeMessages:
    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                data = self.rfile.read(int(self.headers.get("content-length", 0)))
                fake.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "t": time.monotonic(),
                                      "body": json.loads(data or b"{}")})
                reply = fake.script.pop(0) if fake.script else None
                if reply is None:  # the script is spent: think until the test ends
                    fake.release.wait(120)
                    reply = error(529, "overloaded_error", "the test is over", {"x-should-retry": "false"})
                elif reply.delay:
                    fake.release.wait(reply.delay)
                payload = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("request-id", f"req_{len(fake.requests)}")
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout, or the engine stopped)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        assert host == "127.0.0.1"
        return f"http://127.0.0.1:{port}"

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def messages(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/v1/messages"]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterable[FakeMessages]:
    fake = FakeMessages()
    yield fake
    fake.close()


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "sk-ant-test-" + secrets.token_hex(16)
    monkeypatch.setenv("ANTHROPIC_API_KEY", value)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("THREADLAB_PRICES", raising=False)
    return value


# ---- an engine with claude threads ------------------------------------------------------------


@pytest.fixture
async def claude_engine(tmp_path: Path, api: FakeMessages, key: str, request: pytest.FixtureRequest):
    """start(proposers=(("claude", 1),), threads=1, **claude settings) -> EngineSession.

    Logs of every logger go, at DEBUG, to state.run/engine.log for the key check."""
    sessions: list[EngineSession] = []
    run_root = tmp_path / "state.run"
    run_root.mkdir()
    handler = logging.FileHandler(run_root / "engine.log")
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    async def start(proposers: tuple[tuple[str, int], ...] = (("claude", 1),), threads: int = 1,
                    per_thread: dict[str, dict[str, Any]] | None = None, **settings: Any) -> EngineSession:
        task_dir = make_task(tmp_path / "bowl")
        db = tmp_path / "state.db"
        store = await Store.open(db, writer=True, create=True)
        reader = await Store.open(db)
        claude = {"base_url": api.url, "timeout_s": 20.0, "max_retries": 2, "cooldown_s": 60.0, **settings,
                  "threads": per_thread or {}}
        config = SessionConfig(task=str(task_dir), profile="smoke", threads=threads, proposers=proposers,
                               cpu_slots=2, patience=100, extra={"claude": claude})
        engine = Engine(store, config, run_root, LocalExecutor(detect_slots(2, "cpu")), heartbeat_s=0.2)
        s = EngineSession(engine, store, reader, asyncio.create_task(engine.run()), db, run_root)
        sessions.append(s)
        return s

    yield start

    problems = []
    for s in sessions:
        s.engine.stop("test over")
        try:
            await asyncio.wait_for(asyncio.shield(s.task), 30)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"engine.run() raised {exc!r}")
        try:
            problems += [r["message"] for r in await s.reader.rows("SELECT message FROM events WHERE kind = 'crash'")]
        finally:
            await s.reader.close()
            await s.store.close()
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()
    if problems and not _call_failed(request):
        pytest.fail("engine problems: " + "; ".join(problems))


def assert_key_nowhere(s: EngineSession, key: str) -> None:
    """Not in state.db (nor its WAL), nor any file under the run directory (logs included)."""
    needle = key.encode()
    places = [s.db, Path(f"{s.db}-wal"), *[p for p in s.run_root.rglob("*") if p.is_file()]]
    assert (s.run_root / "engine.log").stat().st_size > 0, "the log capture wrote nothing"
    leaks = [str(p) for p in places if p.exists() and needle in p.read_bytes()]
    assert not leaks, f"the API key was written to {leaks}"


async def claude_nodes(s: EngineSession) -> list[Any]:
    return await s.rows("SELECT * FROM nodes WHERE json_extract(origin, '$.kind') = 'claude' ORDER BY id")


async def first_claude_node(s: EngineSession, what: str = "a claude proposal") -> Any:
    rows = await s.wait(lambda: claude_nodes(s), 30, what)
    return rows[0]


def expected_cost(*uses: dict[str, Any], model: str = DEFAULT_MODEL) -> float:
    total = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_write_5m_tokens": 0,
             "cache_write_1h_tokens": 0}
    for u in uses:
        total["input_tokens"] += u["input_tokens"]
        total["output_tokens"] += u["output_tokens"]
        total["cache_read_input_tokens"] += u["cache_read_input_tokens"]
        total["cache_write_5m_tokens"] += u["cache_creation"]["ephemeral_5m_input_tokens"]
        total["cache_write_1h_tokens"] += u["cache_creation"]["ephemeral_1h_input_tokens"]
    return usage_cost(total, DEFAULT_PRICES[model])


def tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    last = request["body"]["messages"][-1]
    assert last["role"] == "user"
    return [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]


# ---- the paths --------------------------------------------------------------------------------


async def test_a_normal_proposal_looks_things_up_submits_runs_and_records_its_cost(claude_engine, api, key):
    u1, u2, u3 = usage(2000, 150, write_5m=3000), usage(300, 120, read=3000), usage(500, 400, read=3000)
    api.push(
        message(tool("read_file", {"path": "solution.py"}), use=u1),
        message(tool("read_node", {"node": 1}), tool("read_file", {"path": "evaluate.py"}), use=u2),
        submit(use=u3),
    )
    s = await claude_engine()
    node = await first_claude_node(s)
    origin = json.loads(node["origin"])
    assert node["title"] == "larger step" and "ill-conditioned" in node["hypothesis"]
    assert origin["kind"] == "claude" and origin["proposer"] == "claude" and origin["model"] == DEFAULT_MODEL
    assert origin["usage"] == {"input_tokens": 2800, "output_tokens": 670, "cache_read_input_tokens": 6000,
                               "cache_write_5m_tokens": 3000, "cache_write_1h_tokens": 0}
    assert math.isclose(origin["cost_usd"], expected_cost(u1, u2, u3), rel_tol=1e-6)
    # $2/MTok in, $10 out, $2.50 5m writes, $0.10 reads: 0.0056 + 0.0067 + 0.0075 + 0.0006
    assert math.isclose(origin["cost_usd"], 0.0204, rel_tol=1e-6)
    assert (origin["turns"], origin["requests"], origin["retries"], origin["repaired"]) == (3, 3, 0, False)
    # The TUI's spend figure (sum of the nodes' cost_usd) sees it.
    assert math.isclose(await s.scalar("SELECT SUM(json_extract(origin, '$.cost_usd')) FROM nodes"),
                        origin["cost_usd"], rel_tol=1e-9)
    # It runs like any proposal.
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = ? AND status = 'done'", (node["id"],)),
                 30, "the claude node's exploration run")

    first, second, third = api.messages()[:3]
    sent = first["headers"].get("x-api-key") or first["headers"].get("authorization", "").removeprefix("Bearer ")
    assert sent == key and first["path"] == "/v1/messages"
    body = first["body"]
    assert body["model"] == DEFAULT_MODEL and body["max_tokens"] == 16_000
    assert "temperature" not in body and body["tool_choice"] == {"type": "auto"}
    assert [t["name"] for t in body["tools"]] == ["read_file", "read_node", "submit_proposal"]
    # The stable prefix is cached: the brief (end of system), then the head's code.
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    assert "# Task bowl" in body["system"][-1]["text"] and "[seeds]" in body["system"][-1]["text"]
    head, situation = body["messages"][0]["content"]
    assert head["cache_control"]["type"] == "ephemeral" and "LR = 0.02" in head["text"]
    assert "cache_control" not in situation and "Lessons" in situation["text"]
    # The tools answered from the head and the engine's records.
    [read] = tool_results(second)
    assert "LR = 0.02" in read["content"] and not read.get("is_error")
    node_report, harness = tool_results(third)
    assert "node #1 'baseline'" in node_report["content"] and "loss" in node_report["content"]
    assert harness["content"].startswith("(protected, read-only)")
    # The assistant's turns go back as they came: thinking and tool_use blocks included.
    assert third["body"]["messages"][-2]["role"] == "assistant"
    assert [b["type"] for b in third["body"]["messages"][-2]["content"]] == ["tool_use", "tool_use"]
    # A rolling cache breakpoint on the newest turn; never more than the API's 4.
    assert third["body"]["messages"][-1]["content"][-1]["cache_control"]["type"] == "ephemeral"
    marks = json.dumps(third["body"]).count('"cache_control"')
    assert marks == 3, marks
    assert_key_nowhere(s, key)


async def test_a_rate_limit_is_retried_after_its_retry_after(claude_engine, api, key):
    api.push(error(429, "rate_limit_error", "slow down", {"retry-after": "1"}), submit())
    s = await claude_engine()
    node = await first_claude_node(s)
    origin = json.loads(node["origin"])
    assert (origin["requests"], origin["retries"]) == (2, 1)
    first, second = api.messages()[:2]
    assert second["t"] - first["t"] >= 1.0, "the SDK did not wait for retry-after"
    assert await s.scalar("SELECT COUNT(*) FROM events WHERE kind = 'proposer'") == 0
    assert_key_nowhere(s, key)


async def test_a_server_error_is_retried(claude_engine, api, key):
    api.push(error(500, "api_error", "internal error"), error(529, "overloaded_error", "overloaded"), submit())
    s = await claude_engine()
    origin = json.loads((await first_claude_node(s))["origin"])
    assert (origin["requests"], origin["retries"]) == (3, 2)
    assert origin["usage"]["input_tokens"] == 1200, "failed requests are not billed, nor counted"
    assert_key_nowhere(s, key)


async def test_a_timeout_is_retried(claude_engine, api, key):
    api.push(Reply(delay=5, body=submit().body), submit(title="after a timeout"))
    s = await claude_engine(timeout_s=1.0)
    node = await first_claude_node(s)
    assert node["title"] == "after a timeout"
    assert json.loads(node["origin"])["retries"] == 1 and len(api.messages()) >= 2
    assert_key_nowhere(s, key)


async def test_failures_that_outlast_the_retries_are_recorded_and_the_thread_tries_again(claude_engine, api, key):
    # max_retries 1: two 503s fail one proposal; the thread waits cooldown_s and asks again.
    api.push(error(503, "api_error", "unavailable"), error(503, "api_error", "unavailable"), submit())
    s = await claude_engine(max_retries=1, cooldown_s=0.5)
    events = await s.wait(lambda: s.rows("SELECT * FROM events WHERE kind = 'proposer'"), 30, "the failure event")
    assert events[0]["level"] == "warning" and "(503)" in events[0]["message"]
    assert "trying again" in events[0]["message"]
    assert json.loads(events[0]["data"])["fatal"] is False
    node = await first_claude_node(s, "the proposal after the cooldown")
    assert json.loads(node["origin"])["retries"] == 0
    thread = (await s.rows("SELECT * FROM threads WHERE id = 1"))[0]
    assert thread["status"] == "running" and thread["note"] == "claude proposing again"
    assert_key_nowhere(s, key)


async def test_edits_that_do_not_apply_get_one_repair_turn(claude_engine, api, key):
    api.push(submit(BAD_EDITS), submit(GOOD_EDITS, title="repaired step"))
    s = await claude_engine()
    node = await first_claude_node(s)
    assert node["title"] == "repaired step" and node["commit_sha"]
    assert json.loads(node["origin"])["repaired"] is True
    [result] = tool_results(api.messages()[1])
    assert result["is_error"] is True and "SEARCH matches nowhere" in result["content"]
    assert "LR = 0.02" in result["content"], "the apply error shows the most similar lines"
    assert_key_nowhere(s, key)


async def test_a_failed_repair_is_recorded_as_a_failed_node(claude_engine, api, key):
    api.push(submit(BAD_EDITS, title="wrong line"), submit(BAD_EDITS, title="still wrong"))
    s = await claude_engine()
    node = await s.wait(lambda: s.rows("SELECT * FROM nodes WHERE title = 'still wrong' AND status = 'failed'"),
                        30, "the failed node")
    node = node[0]
    assert node["commit_sha"] is None and "SEARCH matches nowhere" in node["error"]
    origin = json.loads(node["origin"])
    assert origin["repair_failed"] is True and origin["turns"] == 2 and origin["cost_usd"] > 0
    assert await s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = ?", (node["id"],)) == 0
    assert_key_nowhere(s, key)


async def test_malformed_tool_input_is_sent_back_once(claude_engine, api, key):
    api.push(message(tool("submit_proposal", {"title": 7, "edits": GOOD_EDITS})), submit(title="well formed"))
    s = await claude_engine()
    node = await first_claude_node(s)
    assert node["title"] == "well formed"
    [result] = tool_results(api.messages()[1])
    assert result["is_error"] is True and "malformed input" in result["content"]
    assert "title, hypothesis missing" in result["content"]
    assert json.loads(node["origin"])["usage"]["input_tokens"] == 2400
    assert_key_nowhere(s, key)


async def test_a_refusal_is_recorded_with_its_cost_and_the_thread_goes_on(claude_engine, api, key):
    api.push(message({"type": "text", "text": "I can't help with that."}, stop="refusal", use=usage(900, 20)))
    s = await claude_engine()
    event = (await s.wait(lambda: s.rows("SELECT * FROM events WHERE kind = 'proposer'"), 30, "the refusal"))[0]
    data = json.loads(event["data"])
    assert event["level"] == "warning" and "declined" in event["message"] and data["error"] == "refusal"
    assert math.isclose(data["cost_usd"], (900 * 2 + 20 * 10) / 1e6)
    assert math.isclose(await s.store.spent_usd(), data["cost_usd"]), "a refusal's spend is counted"
    thread = (await s.rows("SELECT * FROM threads WHERE id = 1"))[0]
    assert thread["status"] == "running" and "declined" in thread["note"]
    assert await s.scalar("SELECT COUNT(*) FROM nodes") == 1  # the baseline only
    assert_key_nowhere(s, key)


@pytest.mark.parametrize("status, kind, text, expect", [
    (401, "authentication_error", "invalid x-api-key: {key}", "refused the API key"),
    (400, "invalid_request_error", "Your credit balance is too low to access the Anthropic API.", "no credit"),
    (404, "not_found_error", "model: claude-nonexistent", "not found"),
])
async def test_errors_retrying_cannot_fix_pause_the_thread_and_the_engine_carries_on(
        claude_engine, api, key, status, kind, text, expect):
    # The server even echoes the key back in its message: it must be scrubbed.
    api.push(error(status, kind, text.format(key=key)))
    s = await claude_engine(proposers=(("claude", 1), ("search", 1)), threads=2)
    thread = await s.wait(lambda: s.rows("SELECT * FROM threads WHERE proposer = 'claude' AND status = 'paused'"),
                          30, "the claude thread to pause")
    assert expect in thread[0]["note"] and thread[0]["note"].startswith("proposer error:")
    assert len(api.messages()) == 1, "an error retrying cannot fix was retried"
    events = await s.rows("SELECT * FROM events WHERE kind = 'proposer'")
    assert len(events) == 1 and events[0]["level"] == "error" and "thread paused" in events[0]["message"]
    assert json.loads(events[0]["data"])["fatal"] is True
    # The search thread goes on proposing and running.
    paused_at = time.time()
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM runs r JOIN nodes n ON n.id = r.node_id JOIN threads t "
                                  "ON t.id = n.thread_id WHERE t.proposer = 'search' AND r.status = 'done' "
                                  "AND r.ended_at > ?", (paused_at,)), 30, "the search thread to go on")
    # status shows the reason.
    from tests.conftest import threadlab

    out = await asyncio.to_thread(threadlab, "status", "--db", s.db)
    assert out.returncode == 0 and "paused" in out.stdout and expect in out.stdout, out.stdout
    assert key not in out.stdout + out.stderr
    assert_key_nowhere(s, key)


async def test_the_spending_cap_pauses_proposing_and_says_so(claude_engine, api, key):
    api.push(submit(use=usage(1000, 1000)))  # $0.012
    s = await claude_engine(spend_cap_usd=0.01)
    await first_claude_node(s)
    thread = (await s.wait(lambda: s.rows("SELECT * FROM threads WHERE status = 'paused'"), 30, "the cap"))[0]
    assert "spending cap of $0.01 reached ($0.01 spent)" in thread["note"]
    event = (await s.rows("SELECT * FROM events WHERE kind = 'spend'"))[0]
    assert event["level"] == "warning" and "spending cap" in event["message"]
    assert len(api.messages()) == 1, "a request was made past the cap"
    assert_key_nowhere(s, key)


async def test_model_max_tokens_and_temperature_are_set_per_thread(claude_engine, api, key):
    api.push(submit(title="t1's"), submit(title="t2's"))
    s = await claude_engine(proposers=(("claude", 2),), threads=2, max_tokens=8000,
                            per_thread={"t2": {"model": "claude-opus-5", "temperature": 0.3, "max_tokens": 4000}})
    rows = await s.wait(lambda: _two(claude_nodes(s)), 30, "a proposal of each thread")
    by_thread = {r["thread_id"]: json.loads(r["origin"]) for r in rows}
    assert by_thread[1]["model"] == DEFAULT_MODEL and by_thread[2]["model"] == "claude-opus-5"
    bodies = sorted((r["body"] for r in api.messages()[:2]), key=lambda b: b["max_tokens"])
    assert [(b["model"], b["max_tokens"], b.get("temperature")) for b in bodies] == [
        ("claude-opus-5", 4000, 0.3), (DEFAULT_MODEL, 8000, None)]
    assert_key_nowhere(s, key)


async def _two(rows_coro: Any) -> Any:
    rows = await rows_coro
    return rows if len({r["thread_id"] for r in rows}) >= 2 else None


# ---- the proposer alone -------------------------------------------------------------------------


def _ctx(tmp_path: Path, spent: float = 0.0) -> ProposalContext:
    task = load_task(make_task(tmp_path / "bowl"), "smoke")
    files = {"solution.py": (task.path / "solution.py").read_text()}
    return ProposalContext(task=task, thread_id=1, head_id=1, head_metric=-1.0, head_files=files, lineage=(1,),
                           attempts=(), lessons=(), thread_name="t1", spent_usd=spent)


async def test_a_missing_key_is_an_error_that_names_the_variable_and_no_request_is_made(tmp_path, api, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    proposer = ClaudeProposer(ClaudeSettings(base_url=api.url))
    with pytest.raises(ProposerError) as err:
        await proposer.propose(_ctx(tmp_path))
    assert err.value.fatal and "ANTHROPIC_API_KEY is not set" in str(err.value)
    assert api.messages() == []


async def test_a_protected_file_edit_is_not_repaired_but_handed_to_the_guards(tmp_path, api, key):
    api.push(submit("run.py\n<<<<<<< SEARCH\nimport json\n=======\nimport json, os\n>>>>>>> REPLACE\n"))
    proposer = ClaudeProposer(ClaudeSettings(base_url=api.url))
    try:
        proposal = await proposer.propose(_ctx(tmp_path))
    finally:
        await proposer.aclose()
    assert proposal is not None and proposal.edits[0].file == "run.py" and len(api.messages()) == 1


def test_settings_are_checked_with_one_clear_error():
    from engine.errors import ThreadlabError

    with pytest.raises(ThreadlabError, match="temperature"):
        settings_from_extra({"claude": {"temperature": 3}})
    with pytest.raises(ThreadlabError, match="unknown setting"):
        settings_from_extra({"claude": {"modle": "x"}})
    with pytest.raises(ThreadlabError, match="thread t2"):
        settings_from_extra({"claude": {"threads": {"t2": {"max_tokens": 0}}}})
    defaults, per_thread, prices = settings_from_extra({"claude": {"threads": {"t2": {"model": "claude-opus-5"}}}})
    assert defaults.model == DEFAULT_MODEL and per_thread["t2"].model == "claude-opus-5"
    assert per_thread["t2"].max_tokens == defaults.max_tokens and "claude-opus-5" in prices
