"""The nanochat baseline on one GPU: throughput, MFU and val_bpb.

Runs the unmodified train.py through the same sandboxed runner and evaluator the engine
uses (engine.executor), after measuring the GPU's own bf16 matmul rate. MFU is the
model's training FLOPs per second over that measured rate. Target (issue 3): MFU >= 35%.

    python benchmarks/nanochat_baseline.py [--profile gpu] [--seed 0]

Needs the task's data (`threadlab prepare nanochat`, vocab from the profile). Prints a
table, then one JSON line with the figures and the machine they ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine.executor import LocalExecutor, detect_slots
from engine.models import RunRequest
from engine.sandbox import bwrap_path
from engine.taskfile import load_task

TASK = Path(__file__).resolve().parent.parent / "tasks" / "nanochat"


def matmul_tflops(n: int = 8192, iters: int = 50) -> float:
    """The GPU's sustained bf16 matmul rate, measured (not the datasheet's)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (start.elapsed_time(end) / 1000) / 1e12


def flops_per_token(params: int, depth: int, width: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter (the tied head's matmul included) plus
    attention's score and value products, 12 * depth * width * seq_len (PaLM, appendix B)."""
    return 6 * params + 12 * depth * width * seq_len


async def run_baseline(profile: str, seed: int, workdir: Path) -> tuple:
    spec = load_task(TASK, profile)
    files = [str(p.relative_to(TASK)) for p in TASK.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    executor = LocalExecutor(detect_slots(1, spec.device))
    samples: list[dict] = []

    async def keep(batch: list[dict]) -> None:
        samples.extend(batch)

    req = RunRequest(
        run_id=1, node_id=1, seed=seed, files_dir=str(TASK), run_dir=str(workdir / "run"), budget_s=spec.budget_s,
        grace_s=spec.grace_s, eval_timeout_s=spec.eval_timeout_s, run_command=spec.run_command,
        eval_command=spec.eval_command, protected=tuple(f for f in files if f not in spec.editable),
        private_paths=spec.private, readable=(str(spec.data_dir),),
        env=(("THREADLAB_PARAMS", json.dumps(spec.params)), ("THREADLAB_DATA_DIR", str(spec.data_dir))),
    )
    outcome = await executor.execute(req, executor.slots[0], keep)
    return spec, outcome, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    peak = matmul_tflops()
    torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        spec, outcome, samples = asyncio.run(run_baseline(args.profile, args.seed, Path(tmp)))
        wall = time.time() - t0
        run_dir = Path(tmp) / "run"
        harness = json.loads((run_dir / "out" / "harness.json").read_text()) if (run_dir / "out" / "harness.json").exists() else {}
        log_tail = (run_dir / "stderr.log").read_text()[-2000:] if outcome.status != "done" else ""
    sys.path.insert(0, str(TASK))
    import train  # the baseline's sizes, for the FLOP count

    size = train.SIZES[spec.params["size"]]
    params = outcome.extra.get("params")
    tokens_per_s = harness["tokens"] / harness["train_s"] if harness else None
    mfu = (flops_per_token(params, size["depth"], size["width"], size["seq_len"]) * tokens_per_s / (peak * 1e12)
           if params and tokens_per_s else None)
    audits_failed = [a.guard for a in outcome.audits if not a.ok]
    result = {
        "profile": args.profile,
        "status": str(outcome.status),
        "error": outcome.error[:500],
        "val_bpb": outcome.metric,
        "audit_bpb": outcome.extra.get("audit_bpb"),
        "params": params,
        "tokens": harness.get("tokens"),
        "train_s": round(harness.get("train_s", 0), 1),
        "tokens_per_s": round(tokens_per_s) if tokens_per_s else None,
        "measured_bf16_tflops": round(peak, 1),
        "mfu": round(mfu, 4) if mfu else None,
        "peak_memory_gb": round(harness["peak_memory_gb"], 1) if harness.get("peak_memory_gb") else None,
        "run_s": outcome.extra.get("run_s"),
        "eval_s": outcome.extra.get("eval_s"),
        "wall_s": round(wall, 1),
        "audits_failed": audits_failed,
        "last_train_loss": next((s["value"] for s in reversed(samples) if s["name"] == "train_loss"), None),
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if log_tail:
        print(log_tail)
    machine = {"gpu": harness.get("gpu") or torch.cuda.get_device_name(), "torch": torch.__version__,
               "python": platform.python_version(), "sandbox": "bwrap" if bwrap_path() else "none"}
    print(json.dumps({"benchmark": "nanochat_baseline", "result": result, "machine": machine}))


if __name__ == "__main__":
    main()
