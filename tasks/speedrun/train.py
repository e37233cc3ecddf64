"""A small GPT trained to a fixed validation loss as fast as possible. The only file
proposals may edit.

The speedrun's rule: the score is the run's time, measured by the executor from outside
this process (start-up, training and saving all count), provided the evaluator finds the
saved model's validation loss at or under the profile's target; a run above it fails.
So train exactly as long as the target needs, and no longer.

The harness (runner.py) imports this file inside the sandbox and calls `train(ctx)`,
which returns the trained model; ctx.deadline is a hard limit, not a goal. The evaluator
imports it again in its own process, builds `make_model(vocab_size, size)` and loads the
saved weights, so the model must be a plain function of the knobs below and its weights.

Read top to bottom: knobs, model, optimizer and schedule, training loop.
"""

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- knobs ----------------------------------------------------------------------------
# Model sizes per profile, each with the optimizer steps its baseline takes to the target:
# `full` for one H100, `tiny` for one CPU core.
SIZES = {
    "full": dict(depth=8, width=512, heads=4, seq_len=2048, batch_size=32, steps=4000),
    "tiny": dict(depth=2, width=64, heads=2, seq_len=128, batch_size=8, steps=700),
}
STEPS_SCALE = 1.0  # multiplies the size's steps: fewer is faster, if the target is still reached
GRAD_ACCUM = 1  # micro-batches per optimizer step
LR = 0.003  # peak learning rate of the matrices
EMBED_LR = 0.01  # peak learning rate of the token embedding
WEIGHT_DECAY = 0.1
BETA2 = 0.95
WARMUP_FRAC = 0.02  # share of the steps spent warming up
WARMDOWN_FRAC = 0.3  # share of the steps spent decaying to zero
GRAD_CLIP = 1.0
MLP_RATIO = 4
INIT_STD = 0.02


# ---- model ----------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight)


def rotary(x, base: float = 10000.0):
    """Rotate pairs of channels by an angle that grows with position (RoPE)."""
    _, _, T, D = x.shape
    freqs = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    angles = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), freqs)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q), rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.up = nn.Linear(width, MLP_RATIO * width, bias=False)
        self.down = nn.Linear(MLP_RATIO * width, width, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.attn = RMSNorm(width), Attention(width, heads)
        self.norm2, self.mlp = RMSNorm(width), MLP(width)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, depth: int, width: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = RMSNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied input and output embeddings
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = INIT_STD / math.sqrt(2 * depth) if name.endswith("proj.weight") or name.endswith("down.weight") else INIT_STD
                nn.init.normal_(p, std=std)

    def forward(self, idx):
        """Token ids (B, T) -> next-token logits (B, T, vocab)."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)).float()


def make_model(vocab_size: int, size: str = "full") -> GPT:
    s = SIZES[size]
    return GPT(vocab_size, s["depth"], s["width"], s["heads"])


# ---- optimizer and schedule -------------------------------------------------------------
def make_optimizer(model: GPT, fused: bool) -> torch.optim.Optimizer:
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        dict(params=[model.embed.weight], lr=EMBED_LR, weight_decay=0.0),
        dict(params=matrices, lr=LR, weight_decay=WEIGHT_DECAY),
        dict(params=vectors, lr=LR, weight_decay=0.0),
    ]
    for g in groups:
        g["peak_lr"] = g["lr"]
    return torch.optim.AdamW(groups, betas=(0.9, BETA2), eps=1e-10, fused=fused)


def lr_scale(progress: float) -> float:
    """Warm up, hold, then decay linearly to zero over the last WARMDOWN_FRAC of the steps."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress > 1 - WARMDOWN_FRAC:
        return max(0.0, (1 - progress) / WARMDOWN_FRAC)
    return 1.0


# ---- training ---------------------------------------------------------------------------
def train(ctx) -> nn.Module:
    """Train for the size's steps (times STEPS_SCALE) and return the model.

    ctx gives: device, seed, size ("full" or "tiny"), vocab_size, deadline (time.time()
    units: the harness's hard limit), batches(batch_size, seq_len) -> endless (x, y) on the
    device, and report(step, name, value) for the live curves.
    """
    torch.manual_seed(ctx.seed)
    size = SIZES[ctx.size]
    cuda = ctx.device.startswith("cuda")
    model = make_model(ctx.vocab_size, ctx.size).to(ctx.device)
    optimizer = make_optimizer(model, fused=cuda)
    step_fn = torch.compile(model) if cuda else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    batches = ctx.batches(size["batch_size"], size["seq_len"])

    steps = max(1, round(size["steps"] * STEPS_SCALE))
    for step in range(steps):
        if time.time() >= ctx.deadline:
            break  # out of time: the model as it is (it will likely miss the target)
        for g in optimizer.param_groups:
            g["lr"] = g["peak_lr"] * lr_scale(step / steps)
        for _ in range(GRAD_ACCUM):
            x, y = next(batches)
            with autocast:
                loss = F.cross_entropy(step_fn(x).view(-1, ctx.vocab_size), y.view(-1))
            (loss / GRAD_ACCUM).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0:
            ctx.report(step, "train_loss", loss.item())
    return model
