"""Protected evaluator: scores the candidate's saved model itself and audits it.

val_bpb = sum of per-token cross-entropy (nats) over target tokens with a byte length,
divided by ln 2 times the UTF-8 bytes of those targets; special tokens count zero bytes
and drop out of both sums. The log-softmax and the byte counts are this file's own.

Everything the metric depends on (the val and audit tokens, the byte table, the torch
functions used here) is loaded or snapshotted BEFORE the candidate's train.py is
imported, and checked unchanged afterwards. Audits, each reported under its own name:

  audit.load         the weights load into make_model() exactly (no extra state)
  audit.finite       val and audit bpb are finite
  audit.params       the parameter count is within the profile's limit
  audit.budget       the training run stayed within its time allowance (executor's clock)
  audit.causality    changing tokens after position t leaves the logits up to t unchanged
  audit.stateless    the same batches in another order give the same per-batch losses
  audit.integrity    the byte table, the data and the torch functions are untouched
  audit.printed_metric  a val_bpb printed by the candidate is only reported when it lies

The val/audit gap (extra.audit_gap) is compared with the baseline's by the engine.
"""

import hashlib
import json
import math
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

import data

PARAMS = json.loads(os.environ.get("THREADLAB_PARAMS", "{}"))
VOCAB = int(PARAMS.get("vocab", 8192))
SIZE = PARAMS.get("size", "full")
SEQ_LEN = int(PARAMS.get("eval_seq_len", 2048))
BATCH = int(PARAMS.get("eval_batch", 8))
EVAL_TOKENS = int(PARAMS.get("eval_tokens", 1 << 20))
MAX_PARAMS = int(PARAMS.get("max_params", 200_000_000))
RUN_LIMIT_S = float(PARAMS.get("train_s", 300)) + float(PARAMS.get("startup_allowance_s", 60))
OUT = os.environ.get("THREADLAB_OUT", ".")
RUN_DIR = os.environ.get("THREADLAB_RUN_DIR", "")
LN2 = math.log(2)



def library_functions() -> dict:
    """The library functions the metric relies on, as they are now."""
    return {
        "torch.log_softmax": torch.log_softmax,
        "F.log_softmax": F.log_softmax,
        "torch.logsumexp": torch.logsumexp,
        "Tensor.gather": torch.Tensor.gather,
        "Tensor.sum": torch.Tensor.sum,
        "torch.no_grad": torch.no_grad,
        "torch.load": torch.load,
    }


TRUSTED = library_functions()  # snapshotted before any candidate code runs


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


class Audits:
    def __init__(self):
        self.items = []

    def add(self, guard: str, ok: bool, message: str = "", **evidence) -> bool:
        self.items.append({"guard": guard, "ok": bool(ok), "message": message, "evidence": evidence})
        return ok


def windows(tokens: np.ndarray, limit: int):
    """Non-overlapping (x, y) windows of SEQ_LEN + 1 tokens, BATCH at a time."""
    span = SEQ_LEN + 1
    n = min(len(tokens), limit) // span
    if n == 0:
        raise ValueError(f"only {len(tokens)} tokens, fewer than one window of {span}")
    chunks = torch.from_numpy(np.asarray(tokens[: n * span], dtype=np.int64)).view(n, span)
    for i in range(0, n, BATCH):
        batch = chunks[i : i + BATCH]
        yield batch[:, :-1], batch[:, 1:]


def batch_nats_bytes(model, x, y, token_bytes, device):
    """(sum of target nats over byte-bearing tokens, their byte count) for one batch."""
    x, y = x.to(device), y.to(device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        logits = model(x)
    logits = logits.float()
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # our own log-softmax
    nats = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    nbytes = token_bytes[y]
    mask = nbytes > 0
    return float(nats[mask].double().sum()), int(nbytes[mask].sum())


def bpb(model, tokens, token_bytes, device) -> tuple[float, list[float]]:
    """The split's bits per byte, and each batch's own bpb (for the statelessness audit)."""
    total_nats, total_bytes, per_batch = 0.0, 0, []
    for x, y in windows(tokens, EVAL_TOKENS):
        nats, nbytes = batch_nats_bytes(model, x, y, token_bytes, device)
        total_nats += nats
        total_bytes += nbytes
        per_batch.append(nats / (LN2 * max(1, nbytes)))
    return total_nats / (LN2 * total_bytes), per_batch


def causality(model, tokens, device, audits: Audits) -> None:
    """Logits at positions <= t must not move when tokens after t change."""
    x, _ = next(windows(tokens, EVAL_TOKENS))
    x = x[:2].to(device)
    gen = torch.Generator().manual_seed(1234)
    worst, where = 0.0, None
    for t in sorted({1, SEQ_LEN // 3, SEQ_LEN // 2, SEQ_LEN - 2}):
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randint(0, VOCAB, (x.size(0), SEQ_LEN - t - 1), generator=gen).to(device)
        with torch.no_grad():
            a, b = model(x)[:, : t + 1].float(), model(x2)[:, : t + 1].float()
        diff = float((a - b).abs().max() / (a.abs().max() + 1e-6))
        if diff > worst:
            worst, where = diff, t
    audits.add("audit.causality", worst < 1e-3,
               "" if worst < 1e-3 else f"logits up to position {where} changed by {worst:.3g} (relative) "
               "when later tokens changed: the model sees the future",
               max_relative_change=worst, position=where)


def stateless(model, tokens, token_bytes, device, audits: Audits) -> None:
    """The same batches evaluated in reverse order must give the same per-batch losses."""
    batches = list(windows(tokens, 4 * BATCH * (SEQ_LEN + 1)))[:4]
    forward = [batch_nats_bytes(model, x, y, token_bytes, device)[0] for x, y in batches]
    backward = [batch_nats_bytes(model, x, y, token_bytes, device)[0] for x, y in reversed(batches)][::-1]
    worst = max(abs(a - b) / max(1e-9, abs(a)) for a, b in zip(forward, backward))
    tol = 1e-2 if device == "cuda" else 1e-5
    audits.add("audit.stateless", worst < tol,
               "" if worst < tol else f"per-batch losses change with evaluation order by {worst:.3g} (relative): "
               "the model carries state across batches", max_relative_change=worst, forward=forward,
               backward=backward)


def printed_metric(measured: float, audits: Audits) -> None:
    """A candidate that prints a val_bpb other than the measured one is trying to mislead."""
    log = os.path.join(RUN_DIR, "stdout.log")
    text = open(log, errors="replace").read()[-1_000_000:] if os.path.exists(log) else ""
    claims = [float(m) for m in re.findall(r"val_bpb\W{0,3}\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)", text)]
    lies = [c for c in claims if abs(c - measured) > 0.01]
    audits.add("audit.printed_metric", not lies,
               "" if not lies else f"the candidate printed val_bpb {lies[-1]:.4g}; the evaluator measured {measured:.4g}",
               printed=lies[-5:], measured=measured)


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    audits = Audits()
    val, audit_split = data.load_tokens("val", VOCAB), data.load_tokens("audit", VOCAB)
    val = np.array(val[:EVAL_TOKENS])  # private copies in memory, loaded before the candidate runs
    audit_split = np.array(audit_split[:EVAL_TOKENS])
    byte_table = np.array(data.load_token_bytes(VOCAB))
    before = {"val": digest(val), "audit": digest(audit_split), "token_bytes": digest(byte_table)}
    token_bytes = torch.from_numpy(byte_table.astype(np.int64)).to(device)

    import train  # the candidate's code, pristine from its commit

    model = train.make_model(VOCAB, SIZE)
    state = TRUSTED["torch.load"](os.path.join(OUT, "model.pt"), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    audits.add("audit.load", not missing and not unexpected,
               "" if not (missing or unexpected) else "the saved weights do not match make_model()",
               missing=list(missing)[:10], unexpected=list(unexpected)[:10])
    model.to(device).eval()
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    audits.add("audit.params", n_params <= MAX_PARAMS,
               "" if n_params <= MAX_PARAMS else f"{n_params:,} parameters, over the limit of {MAX_PARAMS:,}",
               params=n_params, limit=MAX_PARAMS)
    run_s = float(os.environ.get("THREADLAB_RUN_S", "0"))
    audits.add("audit.budget", run_s <= RUN_LIMIT_S,
               "" if run_s <= RUN_LIMIT_S else f"the run took {run_s:.1f}s, over its allowance of {RUN_LIMIT_S:.0f}s",
               run_s=run_s, limit_s=RUN_LIMIT_S)

    t0 = time.time()
    val_bpb, _ = bpb(model, val, token_bytes, device)
    audit_bpb, _ = bpb(model, audit_split, token_bytes, device)
    eval_s = time.time() - t0
    audits.add("audit.finite", math.isfinite(val_bpb) and math.isfinite(audit_bpb),
               "" if math.isfinite(val_bpb) and math.isfinite(audit_bpb) else "val or audit bpb is not finite",
               val_bpb=val_bpb, audit_bpb=audit_bpb)
    causality(model, val, device, audits)
    stateless(model, val, token_bytes, device, audits)

    after = {"val": digest(val), "audit": digest(audit_split), "token_bytes": digest(byte_table)}
    now = library_functions()
    patched = [name for name, fn in TRUSTED.items() if now[name] is not fn]
    changed = [k for k in before if before[k] != after[k]]
    audits.add("audit.integrity", not patched and not changed,
               "" if not (patched or changed) else f"the candidate changed {', '.join(patched + changed)}",
               patched=patched, changed=changed)
    printed_metric(val_bpb, audits)

    result = {
        "metric": val_bpb if math.isfinite(val_bpb) else None,
        "audits": audits.items,
        "extra": {"audit_bpb": audit_bpb, "audit_gap": audit_bpb - val_bpb, "params": n_params,
                  "eval_s": round(eval_s, 3), "eval_tokens": int(min(len(val), EVAL_TOKENS))},
    }
    with os.fdopen(int(os.environ["THREADLAB_RESULT_FD"]), "w") as channel:
        json.dump(result, channel)


if __name__ == "__main__":
    main()
