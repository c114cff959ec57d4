"""bench-attn's tables: the results of `variants` (and its --memory) and `decode` as text. (runtimes' and serve's
tables are beside their measurements, bench/runtimes.py and bench/serve.py, whose progress lines share them.)"""

from __future__ import annotations

from attn_onnx import __version__


def variants_table(bench) -> str:
    """The results as text, one block per (threads, shape)."""
    lines = [
        f"bench-attn {__version__}: {bench.cpu}; width {bench.embedding_dim}, {bench.heads} heads, "
        "causal+padding mask input, float32 unless marked @; "
        + ", ".join(f"{k} {v}" for k, v in bench.versions.items() if k != "attn_onnx")
    ]
    width = max([22, *(len(t.contender) + 2 for t in bench.timings)])
    for n in bench.threads:
        lines.append(
            f"threads {n}: sgemm limit (onnxruntime MatMul 2048^3) {bench.sgemm_gflops[n]:.0f} GFLOP/s; "
            f"torch.matmul {bench.torch_sgemm_gflops[n]:.0f} GFLOP/s"
        )
        head = (
            f"  {'contender':<{width}}{'median ms':>10}{'vs sdpa':>9}{'beat sdpa':>10}{'vs export':>10}"
            f"{'GFLOP/s':>9}{'% limit':>9}{'max_abs':>10}"
        )
        for shape in dict.fromkeys((t.batch, t.length) for t in bench.timings if t.threads == n):
            lines += [f" ({shape[0]},{shape[1]})", head]
            for t in bench.timings:
                if (t.batch, t.length, t.threads) == (*shape, n):
                    err = f"{t.max_abs:.1e}" if t.max_abs is not None else "-"
                    export = f"{t.vs_export:.2f}x" if t.vs_export else "-"
                    beat = f"{t.faster_rounds}/{len(t.rounds_ms)}" if t.faster_rounds is not None else "-"
                    lines.append(
                        f"  {t.contender:<{width}}{t.median_ms:>10.3f}{t.vs_sdpa:>8.2f}x{beat:>10}"
                        f"{export:>10}{t.gflops:>9.1f}{t.limit_fraction:>9.0%}{err:>10}"
                    )
    return "\n".join(lines)


def fastest_lines(bench, rounds: int) -> list[str]:
    """Per thread count and shape, the fastest onnxruntime contender whose answer is right."""
    from attn_onnx.bench.bench import fastest

    lines = []
    for n in bench.threads:
        for batch, length in dict.fromkeys((t.batch, t.length) for t in bench.timings if t.threads == n):
            best = fastest(bench, batch, length, n)
            if best is not None:
                export = f"{best.vs_export:.2f}x torch-export, " if best.vs_export else ""  # when it was timed
                lines.append(
                    f"fastest correct at ({batch},{length}), {n} thread(s): {best.contender}, "
                    f"{best.vs_sdpa:.2f}x SDPA (faster in {best.faster_rounds} of {rounds} rounds), "
                    f"{export}{best.limit_fraction:.0%} of the sgemm limit"
                )
    return lines


def memory_table(memory: dict) -> str:
    lines = [
        f"peak RSS of one run at ({memory['batch']},{memory['length']}), {memory['threads']} thread(s), "
        "in a fresh onnxruntime process:",
        f"  {'variant':<22}{'peak MiB':>10}{'run MiB':>10}  (run: above the loaded session; inputs "
        f"{next(iter(memory['variants'].values())).get('inputs_mib', 0):.0f} MiB)",
    ]
    for name, m in memory["variants"].items():
        if "error" in m:
            lines.append(f"  {name:<22}failed: {m['error']}")
        else:
            lines.append(f"  {name:<22}{m['peak_mib']:>10.0f}{m['run_mib']:>10.0f}")
    return "\n".join(lines)


def decode_table(bench) -> str:
    """bench-attn decode's results: batch 1 per cache length, the batch scenario, the memory."""
    lines = [
        f"bench-attn decode: {bench.cpu}; width {bench.embedding_dim}, {bench.heads} heads, {bench.threads} "
        f"thread(s), {bench.rounds} rounds, medians, each call cold; one new token through the KV cache: concat "
        f"(--kv-cache) and the static cache in place (--kv-cache --max-len {bench.max_len}); against the memory "
        f"limit, streaming at {bench.stream_gib_s:.1f} GiB/s measured in the same rounds",
        " batch 1:",
        f"  {'past_len':>8}  {'form':<22}{'step ms':>9}{'vs concat':>11}{'reads MiB':>11}{'limit ms':>10}"
        f"{'of limit':>10}{'allocates MiB':>15}{'max_abs':>10}{'recompute ms':>14}{'speedup':>9}",
    ]
    for row in bench.steps:
        recompute = f"{row.recompute_ms:>14.3f}{row.vs_recompute:>8.1f}x" if row.recompute_ms is not None else ""
        lines.append(
            f"  {row.past_len:>8}  {row.form:<22}{row.step_ms:>9.3f}{row.vs_concat:>10.2f}x{row.read_mib:>11.2f}"
            f"{row.limit_ms:>10.3f}{row.of_limit:>9.0f}%{row.allocated_mib:>15.3f}{row.max_abs:>10.1e}{recompute}"
        )
    lines.append(
        "  reads: the valid cache (keys and values) and the weights, once; limit: those bytes at the streaming "
        "rate; allocates: the step's outputs, new on every call (in place: the output alone, the presents are the "
        "bound buffers); max_abs: the output against concat's; recompute: the plain causal export on past_len + 1 "
        "tokens, and concat's speed-up over it"
    )
    if bench.batch:
        lengths = bench.batch_lens
        lines += [
            f" batch {len(lengths)}, one new token each, the sequences at {','.join(map(str, lengths))}:",
            f"  {'form':<22}{'step ms':>9}{'reads MiB':>11}{'limit ms':>10}{'of limit':>10}{'allocates MiB':>15}"
            f"{'vs padded':>11}{'vs per seq':>12}{'max_abs':>10}",
        ]
        for b in bench.batch:
            lines.append(
                f"  {b.form:<22}{b.step_ms:>9.3f}{b.read_mib:>11.2f}{b.limit_ms:>10.3f}{b.of_limit:>9.0f}%"
                f"{b.allocated_mib:>15.3f}{b.vs_padded:>10.2f}x{b.vs_per_sequence:>11.2f}x{b.max_abs:>10.1e}"
            )
        lines.append(
            f"  static: one call, each sequence at its own length; concat padded: one call, every cache padded to "
            f"{max(lengths)} and a mask input hiding the padding (it reads the padding too); concat per sequence: "
            f"{len(lengths)} batch-1 calls, each cold, the sum (each reads the weights); max_abs: against concat per "
            "sequence"
        )
    if bench.memory:
        first = bench.memory[0]
        lines += [
            f" memory, each form in a fresh process: RSS over {first.steps} decoding steps from {first.past_len} "
            "cached tokens, the cache growing; what a step allocates, measured at that length (onnxruntime's arena "
            "off, glibc mapping every buffer from 16 KiB, each step's outputs held: the pages they fault in)",
            f"  {'form':<22}{'RSS before MiB':>15}{'after MiB':>11}{'growth MiB':>12}{'outputs MiB':>13}"
            f"{'measured MiB':>14}",
        ]
        for m in bench.memory:
            fresh = f"{m.fresh_mib:>14.3f}" if m.fresh_mib is not None else f"{'-':>14}"
            lines.append(
                f"  {m.form:<22}{m.rss_before_mib:>15.1f}{m.rss_after_mib:>11.1f}{m.rss_growth_mib:>12.2f}"
                f"{m.outputs_mib:>13.3f}{fresh}"
            )
    return "\n".join(lines)
