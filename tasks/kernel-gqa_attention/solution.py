"""Causal GQA attention forward, flash style: one program per (query block, batch*head)
streams key/value blocks with an online softmax in base 2; the query heads of a group
read the same k/v head. On the GPU the key loop stops at the diagonal (runtime bound);
the CPU interpreter needs constant loop bounds, so there it skips blocks with a branch."""

import math

import torch
import triton
import triton.language as tl

LOG2_BLOCK_M = 7
LOG2_BLOCK_N = 6
LOG2_WARPS = 3
NUM_STAGES = 3


@triton.jit
def _block(q, k_base, v_base, acc, l_i, m_i, start, offs_m, offs_n, offs_d, qk_scale, skt, svt, T: tl.constexpr):
    """One key/value block: scores, online softmax in base 2, accumulate p @ v."""
    offs_kv = start + offs_n
    k = tl.load(k_base + offs_kv[None, :] * skt + offs_d[:, None], mask=offs_kv[None, :] < T, other=0.0)
    s = tl.dot(q, k) * qk_scale
    keep = (offs_m[:, None] >= offs_kv[None, :]) & (offs_kv[None, :] < T)
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_base + offs_kv[:, None] * svt + offs_d[None, :], mask=offs_kv[:, None] < T, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _attention(q_ptr, k_ptr, v_ptr, o_ptr, qk_scale, sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
               T: tl.constexpr, HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, RUNTIME_BOUND: tl.constexpr):
    pid_m = tl.program_id(0)
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
        for start in range(0, tl.minimum((pid_m + 1) * BM, T), BN):
            acc, l_i, m_i = _block(q, k_base, v_base, acc, l_i, m_i, start, offs_m, offs_n, offs_d, qk_scale,
                                   skt, svt, T)
    else:  # interpreter: constant bound, blocks past the diagonal skipped
        for start in range(0, T, BN):
            if start < (pid_m + 1) * BM:
                acc, l_i, m_i = _block(q, k_base, v_base, acc, l_i, m_i, start, offs_m, offs_n, offs_d,
                                       qk_scale, skt, svt, T)
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
