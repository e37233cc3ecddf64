"""The hack corpus table, shared by the tests and benchmarks/kernels_gpu.py (no pytest here).

hack file in hacks/ -> (problem, the checks of which at least one must fail, GPU only)."""

CORPUS = {
    "library_op": ("rmsnorm", {"runtime.library_op"}, False),
    "never_runs": ("rmsnorm", {"runtime.triton_launch"}, False),
    "replay_pointer": ("rmsnorm", {"correct.replay_probe"}, False),
    "replay_fingerprint": ("rmsnorm", {"correct.replay_probe"}, False),
    "mutate_inputs": ("rmsnorm", {"correct.inputs_unchanged"}, False),
    "partial_output": ("rmsnorm", {"correct.finite", "correct.match"}, False),
    "precision": ("softmax", {"correct.match"}, False),
    "background_thread": ("rmsnorm", {"runtime.threads"}, False),
    "lazy_output": ("rmsnorm", {"correct.type"}, False),
    "patched_timer": ("rmsnorm", {"runtime.patched"}, False),
    "result_channel": ("rmsnorm", {"runtime.result_channel"}, False),
    "stale_output": ("rmsnorm", {"correct.finite", "correct.match"}, False),
    "side_stream": ("rmsnorm", {"timing.side_stream", "runtime.side_stream"}, True),
    # what Triton does on a GPU launch (gcc, ptxas, cache writes) is excused only on its own path
    "subprocess_call": ("rmsnorm", {"runtime.process"}, False),
    "triton_build": ("rmsnorm", {"runtime.process"}, False),
    "cache_poison": ("rmsnorm", {"runtime.file_access"}, False),
    "launch_hook": ("rmsnorm", {"runtime.patched"}, False),
}
# the static scan catches these too, before anything runs
STATIC = {"background_thread": "static.threads", "patched_timer": "static.patching",
          "result_channel": "static.result_channel", "side_stream": "static.side_stream",
          "subprocess_call": "static.process"}
