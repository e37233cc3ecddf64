"""The untrusted half of the evaluator: the candidate's model, and nothing else.

evaluate.py starts this process without the result channel and without the val and
audit splits (neither is reachable from here), with only a shared memory buffer and two
pipes to talk through. It imports the candidate's train.py, loads the saved
weights and answers forward calls: evaluate.py writes a JSON line {"shape": [B, T]}
followed by B*T int64 token ids; this process writes the logits into the buffer and
answers one JSON line {"shape": [B, T, V], "dtype": "float32"} (or {"error": "..."}).
The buffer is a shared memory file (memfd). Not CUDA IPC: in the sandbox (no ptrace of
the parent, its own /dev/shm that evaluate.py empties between model processes) opening the
handle failed on an H100 and its reference-count file broke evaluate.py's exit.

Whatever the candidate's code does in here, it can only choose the logits it returns:
the loss, the byte counts and every audit are computed by evaluate.py.

    python model_worker.py CONFIG_JSON
CONFIG_JSON: {"vocab", "size", "weights", "device", "in_fd", "out_fd", "buffer_fd",
"buffer_bytes"}
"""

import json
import mmap
import os
import sys
import traceback

import torch

DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def reply(channel, **message) -> None:
    channel.write(json.dumps(message).encode() + b"\n")
    channel.flush()


def load(config: dict):
    import train  # the candidate's code, from its commit

    model = train.make_model(config["vocab"], config["size"])
    state = torch.load(config["weights"], map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.to(config["device"]).eval()
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return model, {"params": params, "missing": list(missing)[:10], "unexpected": list(unexpected)[:10]}


def compact(logits: torch.Tensor) -> torch.Tensor:
    """bfloat16 when that loses nothing (float32 logits of a bfloat16 matmul): half the bytes."""
    if logits.dtype == torch.float32 and logits.is_cuda:
        half = logits.bfloat16()
        if torch.equal(half.float(), logits):
            return half
    return logits


def serve(model, config: dict, requests, replies, buffer: mmap.mmap) -> None:
    device = config["device"]
    while header := requests.readline():
        b, t = json.loads(header)["shape"]
        ids = torch.frombuffer(bytearray(requests.read(8 * b * t)), dtype=torch.int64).view(b, t)
        try:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = model(ids.to(device))
            if not isinstance(logits, torch.Tensor) or logits.dtype not in DTYPES:
                raise TypeError(f"the model returned {type(logits).__name__} "
                                f"{getattr(logits, 'dtype', '')}, not a float tensor of logits")
            logits = compact(logits.detach())
            size = logits.numel() * logits.element_size()
            if size > len(buffer):
                raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}, "
                                 f"larger than expected")
            torch.frombuffer(buffer, dtype=logits.dtype, count=logits.numel()).copy_(logits.reshape(-1))
            reply(replies, shape=list(logits.shape), dtype=DTYPES[logits.dtype])
        except Exception as exc:  # the candidate's failure, reported to the evaluator
            traceback.print_exc()
            reply(replies, error=f"{type(exc).__name__}: {exc}"[:2000])
            return


def main() -> None:
    config = json.loads(sys.argv[1])
    if config["device"] == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    requests = os.fdopen(config["in_fd"], "rb")
    replies = os.fdopen(config["out_fd"], "wb")
    buffer = mmap.mmap(config["buffer_fd"], config["buffer_bytes"])
    os.close(config["buffer_fd"])
    try:
        model, facts = load(config)
    except Exception as exc:
        traceback.print_exc()
        reply(replies, error=f"loading the model failed: {type(exc).__name__}: {exc}"[:2000])
        return
    reply(replies, ready=True, **facts)
    serve(model, config, requests, replies, buffer)


if __name__ == "__main__":
    main()
