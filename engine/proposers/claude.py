"""The `claude` proposer: Claude through the anthropic SDK's Messages API with tools.

One proposal is one short conversation. Its context:

- system (cached): how to work here, then the task's brief: task.toml and its notes file;
- first user turn: the head's editable files (cached: stable while the head stands), then
  what changes between calls: this thread's recent attempts with their metrics, errors
  and alerts, the Lessons of every thread, and proposals still running.

Tools: `read_file` (a task file at the head), `read_node` (a past node's diff, runs,
metrics, verdict and log tail) and `submit_proposal` (title, hypothesis and edits as
SEARCH/REPLACE blocks, the one edit format of every proposer). The edits are checked
against the head before the proposal is handed to the engine: when they do not apply,
one repair turn sends the error back; when the repair fails too, the proposal goes to the
engine as it is and is recorded as a failed node. Edits to protected files are never
"repaired": the engine's static guard flags them.

Errors. The SDK retries rate limits (honouring retry-after), overload, server errors,
timeouts and dropped connections with exponential backoff (`max_retries`, `timeout_s`).
What is still failing after that, a refusal, or malformed tool input twice raises a
ProposerError that the engine records before asking again after `cooldown_s`. What
retrying cannot fix (bad key, no credit, unknown model, a request the API refuses) raises
a fatal ProposerError: the engine pauses the thread with the reason as its note.

Money. Every response's usage (input, output, cache reads and writes by TTL) is summed
per proposal and priced with engine/proposers/prices.py; the proposal's origin carries
`usage` and `cost_usd`. Before each proposal the session's spend (state.db) is compared
with the spending cap; at the cap the thread pauses and says so.

The API key is read from ANTHROPIC_API_KEY only, passed to the SDK, and scrubbed from
every message this module produces.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import anthropic

from engine.edits import apply_edits, normalize_path, parse_edit_blocks
from engine.errors import EditError, ThreadlabError
from engine.models import Edit, Proposal
from engine.proposers.base import Attempt, ProposalContext, ProposerError
from engine.proposers.prices import PRICES_AS_OF, ModelPrice, merged_prices, price_for, usage_cost

log = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-sonnet-5-5"
API_KEY_ENV = "ANTHROPIC_API_KEY"
_FILE_LIMIT = 200_000  # characters of a file read_file returns
_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}")


@dataclass(frozen=True)
class ClaudeSettings:
    """How a thread talks to Claude. Session defaults, optionally overridden per thread."""

    model: str = DEFAULT_MODEL
    max_tokens: int = 16_000
    temperature: float | None = None  # None: the model's default (current models refuse others)
    effort: str | None = None  # output_config.effort: low | medium | high | xhigh | max
    timeout_s: float = 300.0  # one HTTP request
    max_retries: int = 4  # SDK retries of one request (429, 5xx, 529, timeouts)
    max_turns: int = 8  # model turns per proposal (tool lookups included)
    cooldown_s: float = 60.0  # after a failed proposal, before the thread asks again
    cache_ttl: str = "5m"  # prompt-cache TTL of the stable prefix: 5m | 1h
    spend_cap_usd: float | None = None  # the session's spending cap over all claude threads
    recent_attempts: int = 12  # this thread's attempts shown in the context
    base_url: str | None = None  # another endpoint (a proxy, or the tests' local server)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "claude settings") -> ClaudeSettings:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ThreadlabError(f"{where}: unknown setting(s) {', '.join(unknown)}",
                                 hint=f"known: {', '.join(known)}")
        out = cls(**d)
        out.check(where)
        return out

    def check(self, where: str = "claude settings") -> None:
        def bad(name: str, allowed: str) -> ThreadlabError:
            return ThreadlabError(f"{where}: {name} = {getattr(self, name)!r} is not allowed", hint=f"{name}: {allowed}")

        if not isinstance(self.model, str) or not self.model.strip():
            raise bad("model", "a Claude model id such as " + DEFAULT_MODEL)
        for name, low in (("max_tokens", 1), ("max_retries", 0), ("max_turns", 2), ("recent_attempts", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise bad(name, f"a whole number >= {low}")
        for name in ("timeout_s", "cooldown_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise bad(name, "a number of seconds > 0")
        if self.temperature is not None and (isinstance(self.temperature, bool) or not isinstance(
                self.temperature, (int, float)) or not 0 <= self.temperature <= 1):
            raise bad("temperature", "a number in [0, 1], or leave it unset for the model's default")
        if self.effort is not None and self.effort not in ("low", "medium", "high", "xhigh", "max"):
            raise bad("effort", "low, medium, high, xhigh or max")
        if self.cache_ttl not in ("5m", "1h"):
            raise bad("cache_ttl", "5m or 1h")
        if self.spend_cap_usd is not None and (isinstance(self.spend_cap_usd, bool) or not isinstance(
                self.spend_cap_usd, (int, float)) or self.spend_cap_usd <= 0):
            raise bad("spend_cap_usd", "a number of US dollars > 0")


def settings_from_extra(extra: dict[str, Any]) -> tuple[ClaudeSettings, dict[str, ClaudeSettings], dict[str, ModelPrice]]:
    """(session defaults, per-thread settings by thread name, prices) from SessionConfig.extra."""
    raw = dict(extra.get("claude") or {})
    threads = raw.pop("threads", {}) or {}
    prices = raw.pop("prices", {}) or {}
    defaults = ClaudeSettings.from_dict(raw, "claude settings")
    per_thread = {
        name: ClaudeSettings.from_dict({**asdict(defaults), **over}, f"claude settings of thread {name}")
        for name, over in threads.items()
    }
    return defaults, per_thread, merged_prices(prices)


def check_claude_session(extra: dict[str, Any]) -> None:
    """What `threadlab run` checks before it starts an engine with claude threads."""
    defaults, per_thread, prices = settings_from_extra(extra)
    if not os.environ.get(API_KEY_ENV):
        raise ThreadlabError(f"{API_KEY_ENV} is not set: the claude proposer needs an Anthropic API key",
                             hint=f"export {API_KEY_ENV}=... in this shell (it is read from the environment only "
                                  "and never stored), or use --proposer search")
    for s in [defaults, *per_thread.values()]:
        if price_for(s.model, prices) is None:
            raise ThreadlabError(
                f"no price for model {s.model!r}: its spending could not be counted",
                hint="add it to a price table (--claude-prices FILE with [prices.\"MODEL\"]), or pick one of "
                     + ", ".join(sorted(prices)))


# ---- the conversation ------------------------------------------------------------------

SYSTEM = """You are a research engineer on one research thread of threadlab, an automated \
research system. Each of your proposals is one concrete change to the task's editable files. \
The engine commits it, runs it under a fixed budget in a sandbox, and its own protected \
evaluator measures the metric; a candidate that beats its parent on the exploration seed is \
re-run on fresh seeds and accepted only if a one-sided statistical test says it is better.

How to work:
- Read the brief, the head code, the attempts and the Lessons. Use read_file and read_node \
when you need a file or the details of a past attempt (its diff, runs, errors, log tail).
- Propose one idea per proposal, one that has not been tried on this head, with a clear, \
testable hypothesis. Prefer changes that plausibly beat the noise floor.
- Submit it with submit_proposal. Edits are SEARCH/REPLACE blocks: the file path on its own \
line, then '<<<<<<< SEARCH', the exact current lines, '=======', the new lines, \
'>>>>>>> REPLACE'. SEARCH must match the head's file exactly once, whitespace included.
- Edit only the editable files. The harness, the evaluator and the data are protected: an \
edit to them, reading validation data, touching timers, spawning processes or reaching the \
network is flagged as a reward hack and never accepted. Only the evaluator's number counts; \
whatever the candidate prints is just log."""

TOOLS: list[dict[str, Any]] = [
    {
        "name": "read_file",
        "description": "Read a file of the task at the thread's head: an editable file, or a protected "
                       "harness file (read-only).",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "path relative to the task folder"}},
            "required": ["path"],
        },
    },
    {
        "name": "read_node",
        "description": "A past node (attempt) in full: title, hypothesis, status, metric and its parent's, "
                       "verdict, alerts, runs, the diff against its parent and the tail of its last run's log.",
        "input_schema": {
            "type": "object",
            "properties": {"node": {"type": "integer", "description": "the node id, e.g. 12 for #12"}},
            "required": ["node"],
        },
    },
    {
        "name": "submit_proposal",
        "description": "Submit this proposal; call it once. The edits must apply to the head's files.",
        "input_schema": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "description": "a short title, under 80 characters"},
                "hypothesis": {"type": "string", "description": "why this should improve the metric"},
                "edits": {"type": "string", "description": "one or more SEARCH/REPLACE blocks"},
            },
            "required": ["title", "hypothesis", "edits"],
        },
    },
]


class _Malformed(Exception):
    pass


class ClaudeProposer:
    name = "claude"

    def __init__(self, settings: ClaudeSettings | None = None, per_thread: dict[str, ClaudeSettings] | None = None,
                 prices: dict[str, ModelPrice] | None = None):
        self.settings = settings or ClaudeSettings()
        self.settings.check()
        self.per_thread = dict(per_thread or {})
        self.prices = prices if prices is not None else merged_prices()
        self._client: anthropic.AsyncAnthropic | None = None
        self._key = ""

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> ClaudeProposer:
        defaults, per_thread, prices = settings_from_extra(extra)
        return cls(defaults, per_thread, prices)

    def settings_for(self, thread_name: str) -> ClaudeSettings:
        return self.per_thread.get(thread_name, self.settings)

    # -- the proposer protocol -----------------------------------------------------------

    def observe(self, attempt: Attempt) -> None:
        """Nothing to learn in memory: every call reads the attempts and Lessons afresh."""

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def propose(self, ctx: ProposalContext) -> Proposal | None:
        s = self.settings_for(ctx.thread_name)
        price = price_for(s.model, self.prices)
        if price is None:
            raise ProposerError(f"no price for model {s.model!r}: its spending cannot be counted", fatal=True,
                                hint="add it to the price table (--claude-prices FILE), then resume the thread")
        cap = s.spend_cap_usd
        if cap is not None and ctx.spent_usd >= cap:
            raise ProposerError(
                f"spending cap of ${cap:.2f} reached (${ctx.spent_usd:.2f} spent): proposing paused", fatal=True,
                kind="spend_cap", hint="start the session again with a higher --spend-cap to go on")
        client = self._client_for(s)
        conv = _Conversation(self, ctx, s, price, client)
        return await conv.run()

    def _client_for(self, s: ClaudeSettings) -> anthropic.AsyncAnthropic:
        key = os.environ.get(API_KEY_ENV, "")
        if not key:
            raise ProposerError(f"{API_KEY_ENV} is not set", fatal=True, kind="auth",
                                hint=f"start the engine from a shell where {API_KEY_ENV} is exported")
        if self._client is None or key != self._key:
            self._key = key
            # The key is passed explicitly so that the SDK looks for no other credentials.
            self._client = anthropic.AsyncAnthropic(api_key=key, base_url=s.base_url, max_retries=s.max_retries,
                                                    timeout=s.timeout_s)
        return self._client

    def redact(self, text: str) -> str:
        if self._key:
            text = text.replace(self._key, "[redacted]")
        return _KEY_PATTERN.sub("[redacted]", text)


class _Conversation:
    """One proposal's turns, usage and cost."""

    def __init__(self, owner: ClaudeProposer, ctx: ProposalContext, s: ClaudeSettings, price: ModelPrice,
                 client: anthropic.AsyncAnthropic):
        self.owner, self.ctx, self.s, self.price, self.client = owner, ctx, s, price, client
        self.usage: Counter[str] = Counter()
        self.requests = 0
        self.retries = 0
        self.turns = 0

    # -- accounting ----------------------------------------------------------------------

    def cost(self) -> dict[str, Any]:
        usage = dict(self.usage)
        return {
            "model": self.s.model, "usage": usage, "cost_usd": round(usage_cost(usage, self.price), 6),
            "requests": self.requests, "retries": self.retries, "prices_as_of": PRICES_AS_OF,
        }

    def _count(self, resp: Any) -> None:
        u = resp.usage
        self.usage["input_tokens"] += u.input_tokens or 0
        self.usage["output_tokens"] += u.output_tokens or 0
        self.usage["cache_read_input_tokens"] += u.cache_read_input_tokens or 0
        written = u.cache_creation_input_tokens or 0
        split = u.cache_creation
        w1h = (split.ephemeral_1h_input_tokens or 0) if split is not None else 0
        w5m = (split.ephemeral_5m_input_tokens or 0) if split is not None else 0
        if split is None or w1h + w5m != written:  # no breakdown: priced at the TTL we asked for
            w1h, w5m = (written, 0) if self.s.cache_ttl == "1h" else (0, written)
        self.usage["cache_write_5m_tokens"] += w5m
        self.usage["cache_write_1h_tokens"] += w1h

    def fail(self, message: str, *, fatal: bool = False, hint: str | None = None, kind: str = "proposer") -> ProposerError:
        return ProposerError(self.owner.redact(message), hint=hint, fatal=fatal, cost=self.cost(), kind=kind,
                             retry_after_s=self.s.cooldown_s)

    # -- the request ---------------------------------------------------------------------

    async def _call(self, system: list[dict[str, Any]], messages: list[dict[str, Any]]) -> Any:
        s = self.s
        kwargs: dict[str, Any] = dict(model=s.model, max_tokens=s.max_tokens, system=system, messages=messages,
                                      tools=TOOLS, tool_choice={"type": "auto"})
        if s.effort is not None:
            kwargs["output_config"] = {"effort": s.effort}
        if s.temperature is not None:  # no longer a named parameter of the SDK's create()
            kwargs["extra_body"] = {"temperature": s.temperature}
        try:
            raw = await self.client.messages.with_raw_response.create(**kwargs)
            self.requests += 1 + raw.retries_taken
            self.retries += raw.retries_taken
            resp = await raw.parse()
        except anthropic.APIStatusError as exc:
            raise self._status_error(exc) from None
        except anthropic.APITimeoutError:
            raise self.fail(f"the Claude API did not answer within {s.timeout_s:g}s, {s.max_retries + 1} "
                            "tries", kind="timeout") from None
        except anthropic.APIConnectionError as exc:
            raise self.fail(f"cannot reach the Claude API after {s.max_retries + 1} tries: "
                            f"{exc.__cause__ or exc}", kind="connection") from None
        except anthropic.APIResponseValidationError as exc:
            raise self.fail(f"the Claude API answered something the SDK cannot read: {exc}",
                            kind="bad_response") from None
        self.turns += 1
        self._count(resp)
        return resp

    def _status_error(self, exc: anthropic.APIStatusError) -> ProposerError:
        code = exc.status_code
        detail = _api_message(exc)
        model = self.s.model
        if code == 401:
            return self.fail(f"the Claude API refused the API key (401): {detail}", fatal=True, kind="auth",
                             hint=f"set {API_KEY_ENV} to a valid key, restart the engine, then "
                                  "`threadlab resume THREAD`")
        if code == 402 or "credit balance" in detail.lower():
            return self.fail(f"the Anthropic account has no credit left ({code}): {detail}", fatal=True,
                             kind="credit", hint="add credit in the Anthropic console, then `threadlab resume THREAD`")
        if code == 403:
            return self.fail(f"the API key may not do this ({code}): {detail}", fatal=True, kind="permission",
                             hint=f"check that the key's workspace may use {model}")
        if code == 404:
            return self.fail(f"model {model!r} not found (404): {detail}", fatal=True, kind="model",
                             hint="pick a current model id with --claude-model (e.g. " + DEFAULT_MODEL + ")")
        if code == 429:
            return self.fail(f"rate limited by the Claude API (429) after {self.s.max_retries + 1} tries: {detail}",
                             kind="rate_limit")
        if code >= 500:
            what = "overloaded" if code == 529 else "a server error"
            return self.fail(f"the Claude API is {what} ({code}) after {self.s.max_retries + 1} tries: {detail}",
                             kind="server")
        if code in (408, 409):
            return self.fail(f"the Claude API timed out the request ({code}): {detail}", kind="server")
        return self.fail(f"the Claude API refused the request ({code}): {detail}", fatal=True, kind="request",
                         hint="check the claude settings of the thread (model, max_tokens, temperature)")

    # -- the turns -----------------------------------------------------------------------

    async def run(self) -> Proposal:
        ctx, s = self.ctx, self.s
        cache = {"type": "ephemeral", "ttl": s.cache_ttl}
        system = [{"type": "text", "text": SYSTEM}, {"type": "text", "text": brief(ctx), "cache_control": cache}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": [
            {"type": "text", "text": head_text(ctx), "cache_control": cache},
            {"type": "text", "text": situation(ctx, s.recent_attempts)},
        ]}]
        repaired = malformed = nudged = False
        for _ in range(s.max_turns):
            _mark_newest(messages, cache)
            resp = await self._call(system, messages)
            if resp.stop_reason == "refusal":
                raise self.fail(f"{s.model} declined to make a proposal (refusal)", kind="refusal")
            uses = [b for b in resp.content if b.type == "tool_use"]
            messages.append({"role": "assistant", "content": [b.to_dict() for b in resp.content]})
            if not uses:
                if resp.stop_reason == "max_tokens":
                    raise self.fail(f"the answer ran past max_tokens ({s.max_tokens}) before a proposal",
                                    kind="max_tokens", hint="raise max_tokens in the claude settings")
                if nudged:
                    raise self.fail(f"{s.model} answered twice without calling submit_proposal", kind="no_proposal")
                nudged = True
                messages.append({"role": "user", "content": "Submit your proposal with the submit_proposal tool."})
                continue
            results: list[dict[str, Any]] = []
            for use in uses:
                if use.name == "submit_proposal":
                    try:
                        title, hypothesis, edits = _submission(use.input)
                    except _Malformed as exc:
                        if malformed:
                            raise self.fail(f"{s.model} sent malformed submit_proposal input twice: {exc}",
                                            kind="malformed") from None
                        malformed = True
                        results.append(_result(use.id, f"malformed input: {exc}. Call submit_proposal again with "
                                                       "title, hypothesis and edits, all strings.", error=True))
                        continue
                    problem = _apply_problem(ctx, edits)
                    if problem is not None and not repaired:
                        repaired = True
                        results.append(_result(use.id, f"the edits do not apply to the head: {problem}\nFix the "
                                                       "SEARCH text and call submit_proposal again.", error=True))
                        continue
                    return self._proposal(title, hypothesis, edits, repaired=repaired, applies=problem is None)
                elif use.name == "read_file":
                    results.append(self._read_file(use.id, use.input))
                elif use.name == "read_node":
                    results.append(await self._read_node(use.id, use.input))
                else:
                    results.append(_result(use.id, f"there is no tool {use.name!r}", error=True))
            messages.append({"role": "user", "content": results})
        raise self.fail(f"no proposal after {s.max_turns} turns", kind="no_proposal",
                        hint="raise max_turns in the claude settings")

    def _proposal(self, title: str, hypothesis: str, edits: list[Edit], *, repaired: bool, applies: bool) -> Proposal:
        origin = {"kind": "claude", **self.cost(), "turns": self.turns, "repaired": repaired}
        if not applies:
            origin["repair_failed"] = True
        return Proposal(title=title[:120], hypothesis=hypothesis, edits=tuple(edits), origin=origin)

    def _read_file(self, use_id: str, data: Any) -> dict[str, Any]:
        path = data.get("path") if isinstance(data, dict) else None
        if not isinstance(path, str):
            return _result(use_id, "read_file needs a 'path' string", error=True)
        text, error = read_task_file(self.ctx, path)
        return _result(use_id, error or text, error=error is not None)

    async def _read_node(self, use_id: str, data: Any) -> dict[str, Any]:
        raw = data.get("node") if isinstance(data, dict) else None
        try:
            node_id = int(str(raw).lstrip("#"))
        except ValueError:
            node_id = -1
        if not 0 < node_id < 2**63:
            return _result(use_id, "read_node needs a 'node' id, e.g. 12", error=True)
        if self.ctx.inspect_node is None:
            return _result(use_id, "node details are not available here", error=True)
        try:
            return _result(use_id, await self.ctx.inspect_node(node_id))
        except ThreadlabError as exc:
            return _result(use_id, str(exc), error=True)


def _mark_newest(messages: list[dict[str, Any]], cache: dict[str, str]) -> None:
    """Move the conversation's rolling cache breakpoint to the newest user turn, so each turn
    reads the turns before it from the cache (the system and head breakpoints stay: 3 of
    the 4 the API allows)."""
    if len(messages) < 2:
        return
    for m in messages[1:]:
        if isinstance(m["content"], list):
            for block in m["content"]:
                if isinstance(block, dict):
                    block.pop("cache_control", None)
    last = messages[-1]
    if isinstance(last["content"], str):
        last["content"] = [{"type": "text", "text": last["content"]}]
    last["content"][-1]["cache_control"] = cache


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            kind = err.get("type")
            return (f"{kind}: " if kind else "") + str(err["message"])[:300]
    return str(exc.message)[:300]


def _result(use_id: str, text: str, error: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "tool_result", "tool_use_id": use_id, "content": text}
    if error:
        out["is_error"] = True
    return out


def _submission(data: Any) -> tuple[str, str, list[Edit]]:
    if not isinstance(data, dict):
        raise _Malformed("the input is not an object")
    missing = [k for k in ("title", "hypothesis", "edits") if not isinstance(data.get(k), str) or not data[k].strip()]
    if missing:
        raise _Malformed(f"{', '.join(missing)} missing or not a non-empty string")
    try:
        edits = parse_edit_blocks(data["edits"])
    except EditError as exc:
        raise _Malformed(f"edits: {exc}") from None
    if not edits:
        raise _Malformed("edits holds no SEARCH/REPLACE block")
    return data["title"].strip().splitlines()[0], data["hypothesis"].strip(), edits


def _apply_problem(ctx: ProposalContext, edits: list[Edit]) -> str | None:
    """Why the edits do not apply to the head; None when they do, or when they touch
    protected files (never repaired: the engine's guard flags those)."""
    editable = set(ctx.task.editable)
    try:
        if any(normalize_path(e.file) not in editable for e in edits):
            return None
        apply_edits(ctx.head_files, edits, ctx.task.editable)
    except EditError as exc:
        return f"{exc}" + (f" ({exc.hint})" if exc.hint else "")
    return None


# ---- the context as text ---------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def brief(ctx: ProposalContext) -> str:
    t = ctx.task
    toml = t.path / "task.toml"
    toml_text = toml.read_text(errors="replace") if toml.is_file() else ""
    parts = [
        f"# Task {t.name} (profile {t.profile})", t.description,
        f"Metric: {t.metric_name} ({t.direction}{', ' + t.unit if t.unit else ''}); noise floor {t.noise_floor:g}; "
        f"confidence {t.confidence:g}.",
        f"Editable files: {', '.join(t.editable)}. Every other file is protected.",
        f"Budget per run: {t.budget_s:g}s. Exploration seeds {list(t.explore_seeds)}, validation seeds "
        f"{list(t.validate_seeds)}.",
        "## task.toml", "```toml", toml_text.strip(), "```",
    ]
    if t.notes.strip():
        parts += ["## Notes", t.notes.strip()]
    return "\n".join(parts)


def head_text(ctx: ProposalContext) -> str:
    parts = [f"# The thread's head: node #{ctx.head_id}, {ctx.task.metric_name} {_fmt(ctx.head_metric)}"]
    for path in sorted(ctx.head_files):
        lang = "python" if path.endswith(".py") else ""
        parts += [f"## {path}", f"```{lang}", ctx.head_files[path].rstrip("\n"), "```"]
    return "\n".join(parts)


def situation(ctx: ProposalContext, recent: int) -> str:
    by_id = {a.node_id: a for a in ctx.attempts}
    mine = [a for a in ctx.attempts if a.thread_id == ctx.thread_id][-recent:] if recent else []
    alerts: dict[int, list[str]] = {}
    for node_id, guard, message in ctx.alerts:
        alerts.setdefault(node_id, []).append(f"{guard}: {message[:200]}")
    metric = ctx.task.metric_name
    lines = [f"# This thread's recent attempts ({len(mine)}, oldest first)"]
    for a in mine:
        parent = by_id.get(a.parent_id) if a.parent_id is not None else None
        text = f"- #{a.node_id} {a.title!r} [{a.status}] {metric} {_fmt(a.metric)}"
        if parent is not None:
            text += f" (parent #{parent.node_id}: {_fmt(parent.metric)})"
        if a.error.strip():
            text += f"; error: {a.error.strip().splitlines()[0][:300]}"
        for alert in alerts.get(a.node_id, [])[:3]:
            text += f"; ALERT {alert}"
        lines.append(text)
    if not mine:
        lines.append("- none yet")
    others = [(n, msgs) for n, msgs in alerts.items() if n not in {a.node_id for a in mine}][:10]
    if others:
        lines.append("# Alerts on other nodes")
        lines += [f"- #{n}: {'; '.join(msgs[:2])}" for n, msgs in others]
    lines.append("# Lessons from every thread (newest last)")
    for les in list(ctx.lessons)[-40:]:
        effect = "" if les.effect is None else f", effect {les.effect:+.4g}"
        conf = "" if les.confidence is None else f", confidence {les.confidence:.2f}"
        where = f", node #{les.node_id}" if les.node_id is not None else ""
        lines.append(f"- [{'+' if les.positive else '-'}] {les.idea}{effect}{conf}{where}")
    if not ctx.lessons:
        lines.append("- none yet")
    if ctx.accepted_elsewhere:
        lines.append("# Accepted on other threads (not in this head)")
        lines += [f"- #{a.node_id} {a.title!r} {metric} {_fmt(a.metric)}" for a in ctx.accepted_elsewhere[-10:]]
    pending = [o for o in ctx.pending_origins]
    if pending:
        lines.append(f"# {len(pending)} proposal(s) from this head are still being measured")
    lines.append(f"\nPropose one new change to the head (node #{ctx.head_id}) and submit it with submit_proposal.")
    return "\n".join(lines)


def read_task_file(ctx: ProposalContext, path: str) -> tuple[str, str | None]:
    """(text, None) or ("", why not): an editable file at the head, or a protected task file."""
    try:
        rel = normalize_path(path)
    except EditError as exc:
        return "", str(exc)
    if rel in ctx.head_files:
        return ctx.head_files[rel][:_FILE_LIMIT], None
    root = ctx.task.path.resolve()
    target = (root / rel).resolve()
    private = [Path(p).resolve() for p in ctx.task.private]
    hidden = any(part.startswith(".") or part == "__pycache__" for part in Path(rel).parts)
    if (not target.is_relative_to(root) or hidden or any(target == p or target.is_relative_to(p) for p in private)
            or not target.is_file()):
        return "", f"no readable task file {rel!r}; files: {', '.join(task_files(ctx))}"
    try:
        text = target.read_text()
    except (OSError, UnicodeDecodeError):
        return "", f"{rel} is not a text file"
    return f"(protected, read-only)\n{text[:_FILE_LIMIT]}", None


def task_files(ctx: ProposalContext, limit: int = 60) -> list[str]:
    root = ctx.task.path
    private = [Path(p).resolve() for p in ctx.task.private]
    out = set(ctx.head_files)
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or not p.is_file():
            continue
        if any(p.resolve().is_relative_to(q) for q in private):
            continue
        out.add(rel.as_posix())
        if len(out) >= limit:
            break
    return sorted(out)


def build_claude_extra(config_file: str | os.PathLike | None = None, prices_file: str | os.PathLike | None = None,
                       **flags: Any) -> dict[str, Any]:
    """SessionConfig.extra["claude"] from a TOML file ([claude] defaults, [claude.threads.NAME]
    per thread, [prices."MODEL"]), a price table file and command-line flags (which win
    over the file's [claude] table). Checked here, so a bad value is said at `threadlab run`."""
    import tomllib

    doc: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file).expanduser()
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ThreadlabError(f"cannot read {path}: {exc.strerror or exc}", hint="check --claude-config") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ThreadlabError(f"{path} is not valid TOML: {exc}",
                                 hint="see the README's Proposers section for the file's form") from exc
    claude = dict(doc.get("claude") or {})
    threads = dict(claude.pop("threads", {}) or {})
    claude.update({k: v for k, v in flags.items() if v is not None})
    prices: dict[str, Any] = dict(doc.get("prices") or {})
    if prices_file is not None:
        from engine.proposers.prices import load_prices_file

        prices.update({m: p.to_dict() for m, p in load_prices_file(prices_file).items()})
    extra = {**claude, "threads": threads, "prices": prices}
    settings_from_extra({"claude": extra})  # every value checked now
    return extra
