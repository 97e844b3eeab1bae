"""`modelpress evaluate | compare | bench-hw | recommend | report | strategies`: the evaluator's
figures, printed as tables for people or JSON for programs."""

from __future__ import annotations

import argparse
import tempfile
import webbrowser
from pathlib import Path

from rich.table import Table

from modelpress import Client
from modelpress.v1 import common_pb2
from services.cli.output import NOT_MEASURED, err, figure, id_column, json_text, out
from services.cli.uploads import model_argument

MB = 1e6


def _ints(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("measurement")
    g.add_argument("--batch-size", type=int, default=0, help="main latency shape (default 1)")
    g.add_argument("--sequence-length", type=int, default=0, help="main latency shape (default 128)")
    g.add_argument("--iterations", type=int, default=0, help="timed passes per shape (default 10)")
    g.add_argument("--quality-windows", type=int, default=0, help="held-out 512-token windows (default 8)")
    g.add_argument("--threads", type=int, default=0, help="torch threads (default 2)")
    g.add_argument("--batch-sizes", type=_ints, default=[], help="extra latency grid, e.g. 1,4,8")
    g.add_argument("--sequence-lengths", type=_ints, default=[], help="extra latency grid, e.g. 128,512")
    g.add_argument("--decode-tokens", type=int, default=0, help="causal LMs: timed decode steps (default 16)")
    g.add_argument("--sentences", type=int, default=0, help="encoders: held-out topic sentences (default 200)")


def spec_from(args, **extra) -> common_pb2.EvaluationSpec:
    return common_pb2.EvaluationSpec(
        batch_size=args.batch_size, sequence_length=args.sequence_length, latency_iterations=args.iterations,
        quality_windows=args.quality_windows, threads=args.threads, batch_sizes=args.batch_sizes,
        sequence_lengths=args.sequence_lengths, decode_tokens=args.decode_tokens,
        quality_sentences=args.sentences, **extra)


def _latency_cell(stats: common_pb2.LatencyStats) -> str:
    if not stats.p50_ms:
        return NOT_MEASURED
    return f"{stats.p50_ms:.1f} / {stats.p95_ms:.1f} / {stats.p99_ms:.1f} ± {stats.stdev_ms:.1f}"


def print_metrics(name: str, m: common_pb2.ModelMetrics) -> None:
    table = Table("figure", "value", title=f"{name} on {m.device}")
    table.add_row("kind / architecture", f"{m.kind} / {m.architecture}")
    table.add_row("size on disk", figure(m.size_on_disk_bytes, "{:.1f} MB", MB))
    table.add_row("parameters (logical)", figure(m.parameters, "{:.2f} M", 1e6))
    table.add_row("parameter bytes (stored)", figure(m.parameter_bytes, "{:.1f} MB", MB))
    table.add_row(f"FLOPs per pass (b{m.latency.batch_size}×s{m.latency.sequence_length})",
                  figure(m.flops, "{:.2f} G", 1e9))
    for stats in [m.latency, *m.latency_grid, *([m.decode] if m.HasField("decode") else [])]:
        throughput = f"  [{stats.tokens_per_s:,.0f} tok/s, {stats.threads} threads]" if stats.p50_ms else ""
        table.add_row(f"{stats.phase} b{stats.batch_size}×s{stats.sequence_length} p50/p95/p99 ± sd (ms)",
                      _latency_cell(stats) + throughput)
    table.add_row("peak RSS", figure(m.peak_rss_mb, "{:.0f} MB"))
    if m.perplexity:
        table.add_row(f"perplexity ({m.quality_tokens} held-out tokens)", figure(m.perplexity, "{:.3f}"))
        table.add_row("next-token top-1", figure(m.top1_accuracy, "{:.4f}"))
    if m.HasField("encoder"):
        e = m.encoder
        table.add_row(f"topic k-NN accuracy ({e.sentences} sentences, {e.topics} topics)",
                      figure(e.knn_topic_accuracy, "{:.4f}"))
        if e.has_reference:
            cosines = " / ".join(figure(value, "{:.5f}")
                                 for value in (e.mean_reference_cosine, e.min_reference_cosine))
            table.add_row("cosine to reference (mean / min)", cosines)
            table.add_row("nearest-neighbour agreement", figure(e.neighbour_agreement, "{:.4f}"))
    out.print(table)


def cmd_evaluate(args, client: Client) -> int:
    extra = {"reference": _ref(model_argument(client, args.reference, err))} if args.reference else {}
    metrics = client.evaluate(model_argument(client, args.model, err), spec_from(args, **extra))
    if args.json:
        print(json_text(metrics))
    else:
        print_metrics(args.model, metrics)
    return 0


def _ref(text: str) -> common_pb2.ModelRef:
    from modelpress import parse_model_ref

    return parse_model_ref(text)


def print_comparison(c: common_pb2.Comparison) -> None:
    checks = [k.metric for k in next((r.checks for r in c.rows if not r.baseline), [])]
    table = Table(id_column("model"), "size MB", "size ×", "FLOPs ×", "p50 ms", "speedup", "RSS ×",
                  "quality kept", *checks, *(["verdict"] if checks else []),
                  title=f"comparison {c.comparison_id} ({c.threshold_set or 'no threshold set'}; "
                        f"{c.interleaved_rounds} interleaved rounds)")
    for r in c.rows:
        m = r.metrics
        latency = f"{m.latency.p50_ms:.1f} ± {m.latency.stdev_ms:.1f}" if m.latency.p50_ms else NOT_MEASURED
        cells = [r.model + (" (baseline)" if r.baseline else ""), figure(m.size_on_disk_bytes, "{:.1f}", MB),
                 figure(r.size_ratio), figure(r.flops_ratio), latency, figure(r.speedup, "{:.2f}"),
                 figure(r.memory_ratio), figure(r.quality_retention, "{:.2%}")]
        if checks and r.baseline:
            cells += ["-"] * (len(checks) + 1)
        elif checks:
            cells += [_verdict(k.passed) for k in r.checks] + [_verdict(r.passed)]
        table.add_row(*cells)
    out.print(table)
    quality = next((r.quality_metric for r in c.rows if r.quality_metric), "")
    out.print(f"quality kept = {quality}; report: modelpress report {c.comparison_id} --out report.html")


def _verdict(passed: bool) -> str:
    return "[green]pass[/green]" if passed else "[red]FAIL[/red]"


def cmd_compare(args, client: Client) -> int:
    models = [model_argument(client, model, err) for model in args.models]
    comparison = client.compare(models, baseline_index=args.baseline, spec=spec_from(args),
                                threshold_set=args.threshold_set)
    if args.json:
        print(json_text(comparison))
    else:
        print_comparison(comparison)
    return 0 if all(r.passed for r in comparison.rows) else 1


def cmd_bench_hw(args, client: Client) -> int:
    if args.list:
        rows = client.list_benchmarks(model=args.model or "", device=args.device)
    else:
        rows = client.run_benchmark(model_argument(client, args.model or "builtin:smollm2-135m", err),
                                    batch_sizes=args.batch_sizes,
                                    sequence_lengths=args.sequence_lengths, iterations=args.iterations,
                                    threads=args.threads)
    if args.json:
        print(json_text(rows))
        return 0
    table = Table("model", "device", "phase", "batch", "seq", "tokens/s", "p50", "p95", "p99", "sd", "memory MB",
                  "power W")
    for r in rows:
        table.add_row(r.model, r.device_name, r.phase, str(r.batch_size), str(r.sequence_length),
                      figure(r.throughput, "{:,.0f}"), figure(r.latency_p50_ms, "{:.1f}"),
                      figure(r.latency_p95_ms, "{:.1f}"), figure(r.latency_p99_ms, "{:.1f}"),
                      f"{r.latency_stdev_ms:.1f}" if r.latency_p50_ms else NOT_MEASURED,
                      figure(r.memory_usage_mb, "{:.0f}"),
                      f"{r.power_consumption_w:.1f}" if r.HasField("power_consumption_w") else NOT_MEASURED)
    out.print(table)
    if rows and not args.list:
        machine = rows[0].machine
        out.print(f"{machine.cpu_model}: {machine.logical_cores} threads, {machine.physical_cores} cores, "
                  f"{machine.memory_mb / 1024:.1f} GiB, ISA {' '.join(machine.isa_features) or '-'}"
                  + (f", GPU {machine.gpu_name}" if machine.gpu_name else ""))
    return 0


def cmd_recommend(args, client: Client) -> int:
    spec = spec_from(args)
    # No measurement flag given: the gateway's quick spec, which stored results are matched against.
    evaluation = {"evaluation": spec} if spec != common_pb2.EvaluationSpec() else {}
    response = client.recommend(model_argument(client, args.model, err), target=args.target,
                                max_size_mb=args.max_size_mb,
                                max_latency_ms=args.max_latency_ms, min_quality_retention=args.min_quality,
                                candidate_recipes=args.candidates, stored_only=args.stored_only,
                                isa_class=args.isa_class, **evaluation)
    if args.json:
        print(json_text(response))
        return 0
    table = Table("#", "recipe", "feasible", "size MB", "p50 ms", "quality kept", "Pareto", id_column("job"),
                  title=f"{args.model} for {args.target} on {response.isa_class} CPUs (baseline "
                        f"{response.baseline_size_mb:.1f} MB, p50 {response.baseline_latency_p50_ms:.1f} ms on "
                        f"{response.device_name})")
    for r in response.recommendations:
        table.add_row(str(r.rank), r.strategy.recipe, "yes" if r.feasible else "[red]no[/red]",
                      figure(r.size_mb, "{:.1f}"), figure(r.latency_p50_ms, "{:.1f}"),
                      figure(r.quality_retention, "{:.2%}"), "yes" if r.pareto_optimal else "",
                      r.job_id + (" (new)" if r.measured_now else ""))
    out.print(table)
    for r in response.recommendations:
        out.print(f"{r.rank}. {r.strategy.recipe}: {r.reason}", markup=False)
    out.print(f"hardware: {response.note}", markup=False)
    return 0 if response.strategies else 1


def cmd_report(args, client: Client) -> int:
    fmt = "json" if (args.out and args.out.endswith(".json")) or args.json else "html"
    key = {"comparison_id": args.id} if args.id.startswith("c-") else {"job_id": args.id}
    content = client.report(fmt=fmt, **key)
    if args.out:
        Path(args.out).write_bytes(content)
        err.print(f"report of {args.id} -> {args.out}")
    elif args.open:
        path = Path(tempfile.mkdtemp(prefix="modelpress-report-")) / f"{args.id}.{fmt}"
        path.write_bytes(content)
        err.print(f"report of {args.id} -> {path}")
        webbrowser.open(path.as_uri())
    else:
        print(content.decode())
    return 0


def cmd_strategies(args, client: Client) -> int:
    strategies = client.list_strategies(isa_class=args.isa_class)
    if args.json:
        print(json_text(strategies))
        return 0
    table = Table("strategy", "scenario", "compression ×", "speedup", "quality kept", "evidence")
    for s in strategies:
        measured = s.expected_compression_ratio > 0
        table.add_row(s.name, s.target_scenario, f"{s.expected_compression_ratio:.2f}" if measured else "-",
                      f"{s.expected_speedup:.2f}" if measured else "-",
                      f"{s.expected_accuracy_retention:.2%}" if measured else "-",
                      s.evidence + (f" [red]({s.emulated_on_isa})[/red]" if s.emulated_on_isa else ""))
    out.print(table)
    return 0


def add_parsers(sub, with_client) -> None:
    """Adds the evaluation commands; `with_client(fn)` wraps a command so it gets a connected client."""
    p = sub.add_parser("evaluate", help="measure one model (size, FLOPs, latency grid, memory, quality)")
    p.add_argument("model", help="builtin:NAME, artifact:ID or path:DIR")
    p.add_argument("--reference", help="encoders: the model whose embeddings are the reference")
    p.add_argument("--json", action="store_true")
    add_spec_arguments(p)
    p.set_defaults(func=with_client(cmd_evaluate))

    p = sub.add_parser("compare", help="measure N models on the same inputs, latency interleaved")
    p.add_argument("models", nargs="+", help="two or more of builtin:NAME, artifact:ID, path:DIR")
    p.add_argument("--baseline", type=int, default=0, help="index of the baseline among MODELS (default 0)")
    p.add_argument("--threshold-set", default="",
                   help="seed-int8, seed-int4, seed-distillation, seed-pruning, seed-deployment, recovery-99, "
                        "recovery-95")
    p.add_argument("--json", action="store_true")
    add_spec_arguments(p)
    p.set_defaults(func=with_client(cmd_compare))

    p = sub.add_parser("bench-hw", help="benchmark a model over a shape grid on this machine; stored")
    p.add_argument("model", nargs="?", help="default builtin:smollm2-135m (with --list: a filter)")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 4])
    p.add_argument("--sequence-lengths", type=_ints, default=[128])
    p.add_argument("--iterations", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list stored benchmarks instead of running one")
    p.add_argument("--device", default="", help="with --list: filter by device name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=with_client(cmd_bench_hw))

    p = sub.add_parser("recommend", help="ranked strategies under constraints, backed by measurements")
    p.add_argument("model")
    p.add_argument("--target", choices=["cloud", "edge", "mobile"], default="cloud")
    p.add_argument("--max-size-mb", type=float, default=0.0)
    p.add_argument("--max-latency-ms", type=float, default=0.0)
    p.add_argument("--min-quality", type=float, default=0.0, help="minimum quality retention in (0, 1]")
    p.add_argument("--candidates", type=lambda t: [x for x in t.split(",") if x], default=[],
                   help="comma-separated recipes (default: the quick set)")
    p.add_argument("--stored-only", action="store_true", help="only stored results; never run jobs")
    p.add_argument("--isa-class", default="", help="recommend for CPUs of this class: amx, avx512-bf16, "
                                                   "avx512-vnni, avx2-vnni, avx2, baseline (default: the evaluator's)")
    p.add_argument("--json", action="store_true")
    add_spec_arguments(p)
    p.set_defaults(func=with_client(cmd_recommend))

    p = sub.add_parser("report", help="a job's or comparison's report (HTML with plots, or JSON)")
    p.add_argument("id", help="a job id (j-...) or comparison id (c-...)")
    p.add_argument("--out", help="write to FILE (.json for JSON, else HTML)")
    p.add_argument("--open", action="store_true", help="open the HTML report in a browser")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.set_defaults(func=with_client(cmd_report))

    p = sub.add_parser("strategies", help="strategy templates with their measured expected figures")
    p.add_argument("--isa-class", default="", help="figures measured on CPUs of this class (default: the "
                                                   "evaluator's; `modelpress engines` shows a worker's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=with_client(cmd_strategies))
