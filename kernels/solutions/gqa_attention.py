"""Causal GQA attention forward, flash style: one program per (query block, batch*head)
streams key/value blocks with an online softmax in base 2; the query heads of a group
read the same k/v head.

What makes it fast on an H100 (the structure of Triton's fused-attention tutorial):
- the key loop stops at the diagonal, and runs in two phases: the blocks left of the
  diagonal need no mask at all (no compare, no select, no masked loads: every key there
  is before every query of the block, and before T); only the blocks that straddle the
  diagonal are masked;
- exp2 with log2(e) folded into the scale, and the scale applied in one FMA with the max
  subtraction (qk * scale - m) instead of a multiply and a subtract;
- the p @ v product accumulates into acc inside tl.dot (wgmma's accumulator), so the
  rescaled accumulator is not added to the product in a separate pass;
- query blocks are launched heaviest first (the last query block has the most keys), so
  the short blocks fill the tail of the grid instead of the long ones.
The first H100 run (BLOCK_M=128, BLOCK_N=64, every block masked, separate add) took
1455 us against SDPA's 965 us at B4 Hq32 Hkv8 T4096 D128.
On the CPU interpreter loop bounds must be constants, so there it skips the blocks past
the diagonal with a branch and masks every block (same results)."""

import math

import torch
import triton
import triton.language as tl

LOG2_BLOCK_M = 7  # 128 queries a program: two warpgroups of 64 rows each (8 warps)
LOG2_BLOCK_N = 6  # 64 keys a step: S (128x64 fp32) and acc (128x128 fp32) stay in registers
LOG2_WARPS = 3
NUM_STAGES = 3  # K and V tiles in flight in shared memory


@triton.jit
def _block(q, k_base, v_base, acc, l_i, m_i, start, offs_m, offs_n, offs_d, qk_scale, skt, svt, T: tl.constexpr,
           MASK: tl.constexpr):
    """One key/value block: scores, online softmax in base 2, acc += p @ v."""
    offs_kv = start + offs_n
    if MASK:
        k = tl.load(k_base + offs_kv[None, :] * skt + offs_d[:, None], mask=offs_kv[None, :] < T, other=0.0)
    else:
        k = tl.load(k_base + offs_kv[None, :] * skt + offs_d[:, None])
    qk = tl.dot(q, k)
    if MASK:  # the diagonal (and the end of the sequence): keys after the query are -inf
        keep = (offs_m[:, None] >= offs_kv[None, :]) & (offs_kv[None, :] < T)
        qk = tl.where(keep, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1) * qk_scale)
    p = tl.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if MASK:
        v = tl.load(v_base + offs_kv[:, None] * svt + offs_d[None, :], mask=offs_kv[:, None] < T, other=0.0)
    else:
        v = tl.load(v_base + offs_kv[:, None] * svt + offs_d[None, :])
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def _attention(q_ptr, k_ptr, v_ptr, o_ptr, qk_scale, sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
               T: tl.constexpr, HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, RUNTIME_BOUND: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest query blocks first
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = (bh % HQ).to(tl.int64)
    hk = h // GROUP
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=offs_m[:, None] < T,
                other=0.0)
    k_base = k_ptr + b * skb + hk * skh
    v_base = v_ptr + b * svb + hk * svh
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, D), tl.float32)
    if RUNTIME_BOUND:  # GPU: stop at the diagonal
        # keys below this one are before every query of the block: no mask needed
        diag = (pid_m * BM) // BN * BN
        for start in range(0, diag, BN):
            acc, l_i, m_i = _block(q, k_base, v_base, acc, l_i, m_i, start, offs_m, offs_n, offs_d, qk_scale,
                                   skt, svt, T, False)
        for start in range(diag, tl.minimum((pid_m + 1) * BM, T), BN):
            acc, l_i, m_i = _block(q, k_base, v_base, acc, l_i, m_i, start, offs_m, offs_n, offs_d, qk_scale,
                                   skt, svt, T, True)
    else:  # interpreter: constant bound, blocks past the diagonal skipped, every block masked
        for start in range(0, T, BN):
            if start < (pid_m + 1) * BM:
                acc, l_i, m_i = _block(q, k_base, v_base, acc, l_i, m_i, start, offs_m, offs_n, offs_d,
                                       qk_scale, skt, svt, T, True)
    out = acc / l_i[:, None]
    tl.store(o_ptr + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=offs_m[:, None] < T)


def solution(q, k, v):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    o = torch.empty_like(q)
    bm, bn = 2**LOG2_BLOCK_M, 2**LOG2_BLOCK_N
    grid = (triton.cdiv(t, bm), b * hq)
    _attention[grid](q, k, v, o, 1.4426950408889634 / math.sqrt(d), q.stride(0), q.stride(1), q.stride(2),
                     k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
                     o.stride(0), o.stride(1), o.stride(2), T=t, HQ=hq, GROUP=hq // hkv, D=d, BM=bm, BN=bn,
                     RUNTIME_BOUND=q.is_cuda, num_warps=2**LOG2_WARPS, num_stages=NUM_STAGES)
    return o
