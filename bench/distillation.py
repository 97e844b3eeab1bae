"""The distiller's bars on both built-in models, each reached by a built-in recipe with its defaults.

    python bench/distillation.py [--parts minilm-small,minilm-small-corpus,minilm-edge,smollm2-shallow,smollm2-small,smollm2-small-half,smollm2-small-augmented,families]
                                 [--iterations 20] [--work DIR] [--reuse] [--print]

Every MiniLM student is also scored on each held-out set (QUALITY_SETS: the pydoc held-out split, then three
sets from other sources than the calibration text, services/common/datasets/heldout_sets.py): its k-NN topic
accuracy kept against the teacher's on the same sentences, and the worst of them — a recipe's figure.

- minilm-small: the `minilm-small` student of MiniLM-L6 (distill-response), against the teacher in one
  interleaved comparison (PyTorch FP32 eager, 1x128 and 32x128): parameters, FLOPs, speed, k-NN
  topic accuracy on the held-out sentences; model2vec's static distillation of the same teacher
  (its default 256 PCA dimensions) scored on the same sentences beside it.
- minilm-small-corpus: the same recipe with the vocabulary trimmed to the training text instead of
  factorized (`vocabulary: corpus`), so the two choices are measured side by side.
- minilm-edge: the composite `minilm-edge` (structured prune to half the FLOPs -> distill-self from
  the original -> ONNX Runtime INT8): the pruned-only, the healed float and the exported model
  against the teacher, at 1x128 and 32x128 (speed, peak memory, k-NN accuracy).
- smollm2-shallow: the composite `smollm2-shallow` (a quarter of the blocks removed -> logit
  distillation from the original on cached top-k logits): pruned-only and healed against the
  original: perplexity on held-out windows, the share of the pruning's gap closed, prefill and
  decode speed.
- smollm2-small: the width variant (every MLP narrowed, down projections refitted) healed the same way;
  smollm2-small-half: the same recipe with half of every MLP chosen by OBS, healed in bf16 where the CPU
  has it on up to 900 k tokens (HALF_MLP), to show what a narrower student and a larger budget buy;
  smollm2-small-augmented: that student on three teacher-proposed copies of every training window
  (AUGMENTED), to show what new contexts buy once the calibration text is learned.
- families: response, feature and attention distillation of the same MiniLM student shape at the
  same short budget, so every loss family has a figure on a real model (self: the two composites).

Writes bench/results/distillation.json (each part replaces its own rows) and prints the tables.
Training is time-bounded: a loaded machine trains fewer steps, and the step counts are recorded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import modelpress
from services.in_process import LINEAGE_FILE
from parts import run_parts  # bench/ (this folder is on sys.path)
from pruning import reloads, speed_of
from quantization import run_method
from services.common.datasets.heldout_sets import HELDOUT_SETS
from services.common.models.builtin_models import builtin_folder
from services.common.runtime.settings import default_cache
from services.evaluator.engine import EvaluationConfig, compare_folders, evaluate_folder

RESULTS = Path(__file__).resolve().parent / "results" / "distillation.json"
SENTENCES = 222  # every held-out topic sentence the evaluator has
QUALITY_SETS = ("heldout", *HELDOUT_SETS)
QUALITY_WINDOWS = 16
SHAPES = ((1, 128), (32, 128))
# The families part: the minilm-small student shape, each family for the same few minutes.
FAMILY_STUDENT = {"student_layers_share": 0.5, "student_mlp_width": 1024, "vocabulary": "corpus",
                  "calibration_samples": 5000, "batch_size": 32, "learning_rate": 5e-4, "max_minutes": 4.0}
FAMILIES = {"distill-response": {}, "distill-feature": {"layer_map": "uniform"},
            "distill-attention": {"attention_loss": "auto"}}


@dataclass
class Stage:
    name: str
    folder: Path
    metrics: dict
    seconds: float


def _compress(model: str, recipe: str, out: Path, args, overrides: dict | None = None) -> tuple[list[Stage], float]:
    """The recipe in-process, every stage's output kept beside (not inside) the final one, whose
    size on disk is measured. With --reuse, a finished earlier run in --work is measured again."""
    stages_dir = out.with_name(out.name + "-stages")
    lineage_file = out / LINEAGE_FILE
    if not (args.reuse and lineage_file.exists()):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(stages_dir, ignore_errors=True)
        modelpress.compress(builtin_folder(model, default_cache()), recipe, out,
                            overrides={**(overrides or {}), **args.overrides}, keep_stages=True)
        if (out / ".stages").exists():
            (out / ".stages").rename(stages_dir)
    lineage = json.loads(lineage_file.read_text())["stages"]
    stages = [Stage(s["name"], out if i == len(lineage) - 1 else stages_dir / f"{s['index']}-{s['name']}",
                    s["metrics"], s["seconds"]) for i, s in enumerate(lineage)]
    return stages, round(sum(s.seconds for s in stages), 1)


def training_figures(metrics: dict) -> dict:
    keep = ("steps", "seconds", "stopped", "tokens", "precision", "best_step", "best_validation_loss",
            "parameters_teacher", "parameters", "parameters_ratio", "flops_ratio", "blocks_teacher", "blocks",
            "kept_layers", "vocabulary_size", "embedding_rank", "train_items", "tokenizer_round_trip", "reload_max_abs_difference")
    return {k: metrics[k] for k in keep if k in metrics}


def _encoder_rows(labels: list[str], figures: list[dict]) -> list[dict]:
    base = figures[0]["encoder"]["knn_topic_accuracy"]
    return [{"model": label, "knn_topic_accuracy": f["encoder"]["knn_topic_accuracy"],
             "accuracy_kept": f["encoder"]["knn_topic_accuracy"] / base,
             "mean_teacher_cosine": f["encoder"].get("mean_reference_cosine"),
             "peak_rss_mb": f["peak_rss_mb"], "memory_ratio": f["peak_rss_mb"] / figures[0]["peak_rss_mb"],
             "size_mb": round(f["size_on_disk_bytes"] / 1e6, 1), "speed": speed_of(f)} for label, f in zip(labels, figures)]


def _compare_encoders(labels: list[str], folders: list[Path], iterations: int) -> dict:
    by_shape = {}
    for batch, length in SHAPES:
        config = EvaluationConfig(batch_size=batch, sequence_length=length, quality_sentences=SENTENCES,
                                  latency_iterations=iterations if batch == 1 else max(5, iterations // 4))
        figures, timing = compare_folders(folders, 0, config)
        by_shape[f"{batch}x{length}"] = {"rows": _encoder_rows(labels, figures), "rounds": timing["rounds"],
                                          "load": timing["load"]}
    return by_shape


def encoder_sets(teacher: Path, labels: list[str], folders: list[Path]) -> dict:
    """Each model's k-NN topic accuracy on every held-out set, kept against the teacher's on the same sentences
    (cosine to the teacher's embeddings beside it), and each model's worst set."""
    by_set = {}
    for name in QUALITY_SETS:
        config = EvaluationConfig(quality_sentences=SENTENCES, quality_split=name)
        base = evaluate_folder(teacher, config, time_latency=False)["encoder"]
        rows = {}
        for label, folder in zip(labels, folders):
            found = evaluate_folder(folder, config, teacher, time_latency=False)["encoder"]
            rows[label] = {"knn_topic_accuracy": found["knn_topic_accuracy"],
                           "accuracy_kept": found["knn_topic_accuracy"] / base["knn_topic_accuracy"],
                           "mean_teacher_cosine": found["mean_reference_cosine"]}
        by_set[name] = {"sentences": base["sentences"], "topics": base["topics"],
                        "teacher_knn_topic_accuracy": base["knn_topic_accuracy"], "rows": rows}
    return {"sets": by_set, "worst": _worst(by_set, labels, "accuracy_kept", min)}


def causal_sets(teacher: Path, labels: list[str], folders: list[Path]) -> dict:
    """Each model's perplexity on QUALITY_WINDOWS windows of every held-out set, its change against the teacher's
    on the same windows, and each model's worst set."""
    by_set = {}
    for name in QUALITY_SETS:
        config = EvaluationConfig(quality_windows=QUALITY_WINDOWS, quality_split=name)
        base = evaluate_folder(teacher, config, time_latency=False)["perplexity"]
        rows = {}
        for label, folder in zip(labels, folders):
            ppl = evaluate_folder(folder, config, time_latency=False)["perplexity"]
            rows[label] = {"ppl": ppl, "delta_ppl": ppl / base - 1}
        by_set[name] = {"teacher_ppl": base, "rows": rows}
    return {"sets": by_set, "worst": _worst(by_set, labels, "delta_ppl", max)}


def _worst(by_set: dict, labels: list[str], figure: str, pick) -> dict:
    """Each model's worst set by `figure` (`pick`: min for a share kept, max for a change in perplexity)."""
    chosen = {label: pick(by_set, key=lambda n: by_set[n]["rows"][label][figure]) for label in labels}
    return {label: {"set": name, figure: by_set[name]["rows"][label][figure]} for label, name in chosen.items()}


def model2vec_row(teacher: Path) -> dict:
    """model2vec's static distillation of the same teacher, scored on the same held-out sentences."""
    import torch
    from model2vec.distill import distill

    from services.evaluator.quality import knn_topic_accuracy, topic_sentences

    start = time.perf_counter()
    static = distill(model_name=str(teacher), pca_dims=256)
    seconds = time.perf_counter() - start
    sentences, labels = topic_sentences(SENTENCES)
    embeddings = torch.nn.functional.normalize(torch.tensor(static.encode(sentences)), dim=-1)
    parameters = int(static.embedding.shape[0] * static.embedding.shape[1])
    return {"tool": "model2vec", "method": "static distillation (pca_dims 256)", "seconds": round(seconds, 1),
            "parameters": parameters, "knn_topic_accuracy": knn_topic_accuracy(embeddings, labels),
            "sentences": len(sentences)}


def _minilm_small(args, work: Path, label: str, overrides: dict) -> dict:
    teacher = builtin_folder("minilm-l6", default_cache())
    (student,), seconds = _compress("minilm-l6", "minilm-small", work / label, args, overrides)
    shapes = _compare_encoders(["teacher", label], [teacher, student.folder], args.iterations)
    return {"model": "minilm-l6", "recipe": "minilm-small", "overrides": overrides, "seconds": seconds,
            "reloads": reloads(student.folder), **training_figures(student.metrics), "shapes": shapes,
            "quality_sets": encoder_sets(teacher, [label], [student.folder])}


def minilm_small(args, work: Path) -> dict:
    found = _minilm_small(args, work, "minilm-small", {})
    anchor = model2vec_row(builtin_folder("minilm-l6", default_cache()))
    anchor["accuracy_kept"] = anchor["knn_topic_accuracy"] / found["shapes"]["1x128"]["rows"][0]["knn_topic_accuracy"]
    return {**found, "model2vec": anchor}


def minilm_small_corpus(args, work: Path) -> dict:
    return _minilm_small(args, work, "minilm-small (vocabulary corpus)", {"distill.vocabulary": "corpus"})


def minilm_edge(args, work: Path) -> dict:
    teacher = builtin_folder("minilm-l6", default_cache())
    stages, seconds = _compress("minilm-l6", "minilm-edge", work / "minilm-edge", args)
    prune, distill, export = stages
    shapes = _compare_encoders(["teacher", "pruned", "pruned+distilled", "minilm-edge (onnx-int8)"],
                               [teacher, prune.folder, distill.folder, export.folder], args.iterations)
    return {"model": "minilm-l6", "recipe": "minilm-edge", "seconds": seconds,
            "quality_sets": encoder_sets(teacher, ["pruned+distilled", "minilm-edge (onnx-int8)"],
                                         [distill.folder, export.folder]),
            "stage_seconds": {s.name: s.seconds for s in stages},
            "prune": {k: prune.metrics.get(k) for k in ("flops_ratio", "parameters_ratio", "shape_after")},
            "distill": training_figures(distill.metrics), "shapes": shapes}


def _smollm2_student(args, work: Path, recipe: str, label: str = "", overrides: dict | None = None) -> dict:
    """A SmolLM2 recipe of prune -> distill-self against the original: perplexity on held-out windows
    (and the held-out sets), speed, and the validation perplexity against tokens trained on."""
    teacher = builtin_folder("smollm2-135m", default_cache())
    stages, seconds = _compress("smollm2-135m", recipe, work / (label or recipe), args, overrides)
    prune, distill = stages
    config = EvaluationConfig(batch_size=1, sequence_length=128, latency_iterations=args.iterations,
                              quality_windows=QUALITY_WINDOWS, decode_tokens=16)
    figures, timing = compare_folders([teacher, prune.folder, distill.folder], 0, config)
    base = figures[0]["perplexity"]
    gap = figures[1]["perplexity"] - base
    rows = [{"model": label, "ppl": f["perplexity"], "delta_ppl": f["perplexity"] / base - 1,
             "peak_rss_mb": f["peak_rss_mb"], "speed": speed_of(f)}
            for label, f in zip(["teacher", "pruned", "pruned+distilled"], figures)]
    return {"model": "smollm2-135m", "recipe": recipe, "overrides": overrides or {}, "seconds": seconds,
            "stage_seconds": {s.name: s.seconds for s in stages},
            "prune": {k: prune.metrics.get(k) for k in ("flops_ratio", "parameters_ratio", "shape_after")},
            "distill": training_figures(distill.metrics), "reloads": reloads(distill.folder),
            "validation_perplexity_curve": distill.metrics.get("validation_perplexity_curve", []),
            "gap_closed": (figures[1]["perplexity"] - figures[2]["perplexity"]) / gap if gap > 0 else None,
            "quality_sets": causal_sets(teacher, ["pruned", "pruned+distilled"], [prune.folder, distill.folder]),
            "quality_windows": QUALITY_WINDOWS, "rows": rows, "rounds": timing["rounds"], "load": timing["load"]}


def smollm2_shallow(args, work: Path) -> dict:
    return _smollm2_student(args, work, "smollm2-shallow")


def smollm2_small(args, work: Path) -> dict:
    return _smollm2_student(args, work, "smollm2-small")


# Half of every MLP (decode past 1.25x in eager), chosen by OBS, healed in bf16 where the CPU has it, on
# three times the tokens: what a narrower student and a larger budget buy on the same calibration text.
HALF_MLP = {"prune.mlp_keep": 0.5, "prune.importance": "obs", "distill.precision": "auto",
            "distill.max_tokens": 900_000, "distill.max_minutes": 60.0}


def smollm2_small_half(args, work: Path) -> dict:
    return _smollm2_student(args, work, "smollm2-small", "smollm2-small (half MLP)", HALF_MLP)


# The half-MLP student on three more copies of every training window, 15 % of their tokens swapped for
# one the teacher proposes there: new contexts for a student that has exhausted the calibration text.
AUGMENTED = {**HALF_MLP, "distill.augment_copies": 3, "distill.augment_source": "teacher",
             "distill.augment_share": 0.15, "distill.max_tokens": 600_000}


def smollm2_small_augmented(args, work: Path) -> dict:
    return _smollm2_student(args, work, "smollm2-small", "smollm2-small (half MLP, augmented)", AUGMENTED)


def families(args, work: Path) -> dict:
    teacher = builtin_folder("minilm-l6", default_cache())
    config = EvaluationConfig(quality_sentences=SENTENCES)
    base = evaluate_folder(teacher, config, time_latency=False)["encoder"]["knn_topic_accuracy"]
    rows = []
    for method, extra in FAMILIES.items():
        out = work / f"family-{method}"
        figures_file = work / f"family-{method}.json"
        if args.reuse and figures_file.exists():
            run = json.loads(figures_file.read_text())
        else:
            shutil.rmtree(out, ignore_errors=True)
            run = run_method("distiller", method, {**FAMILY_STUDENT, **extra, **args.family_overrides}, teacher, out)
            figures_file.write_text(json.dumps(run, default=str))
        accuracy = evaluate_folder(out, config, teacher, time_latency=False)["encoder"]
        m = run["metrics"]
        rows.append({"method": method, "config": extra, **training_figures(m),
                     "last_terms": {k: v[-1] for k, v in m.get("loss_curves", {}).items() if v},
                     "knn_topic_accuracy": accuracy["knn_topic_accuracy"],
                     "accuracy_kept": accuracy["knn_topic_accuracy"] / base,
                     "mean_teacher_cosine": accuracy.get("mean_reference_cosine"), "wall_s": round(run["wall_s"], 1),
                     "peak_rss_mb": round(run["peak_rss_mb"])})
        print(rows[-1], flush=True)
    return {"model": "minilm-l6", "student": FAMILY_STUDENT, "teacher_knn_topic_accuracy": base, "rows": rows}


PARTS = {"minilm-small": minilm_small, "minilm-small-corpus": minilm_small_corpus, "minilm-edge": minilm_edge,
         "smollm2-shallow": smollm2_shallow, "smollm2-small": smollm2_small,
         "smollm2-small-half": smollm2_small_half,
         "smollm2-small-augmented": smollm2_small_augmented, "families": families}


def _speed(row: dict, phase: str) -> str:
    s = row["speed"].get(phase)
    return f"{s['speedup']:.2f} {s['ci95']}" if s else "-"


def _print_encoder_shapes(shapes: dict) -> None:
    print("shape | model | k-NN acc | kept | cos to teacher | speedup [95% CI] | peak RSS MB | memory × | size MB")
    for shape, block in shapes.items():
        for r in block["rows"]:
            print(" | ".join([shape, r["model"], f"{r['knn_topic_accuracy']:.3f}", f"{r['accuracy_kept']:.1%}",
                              f"{r['mean_teacher_cosine']:.4f}" if r["mean_teacher_cosine"] else "-",
                              _speed(r, "forward"), f"{r['peak_rss_mb']:.0f}", f"{r['memory_ratio']:.2f}",
                              str(r["size_mb"])]))
        print(f"  ({shape}: {block['rounds']} interleaved rounds, load {block['load']})")


def _print_sets(found: dict | None) -> None:
    if not found:  # a run from before the held-out sets
        return
    print("held-out set | sentences / topics | teacher k-NN | " + " | ".join(
        f"{label} k-NN (kept, cos)" for label in found["worst"]))
    for name, block in found["sets"].items():
        print(" | ".join([name, f"{block['sentences']} / {block['topics']}", f"{block['teacher_knn_topic_accuracy']:.3f}"]
                         + [f"{r['knn_topic_accuracy']:.3f} ({r['accuracy_kept']:.1%}, {r['mean_teacher_cosine']:.3f})"
                            for r in block["rows"].values()]))
    print("worst: " + ", ".join(f"{label} {w['accuracy_kept']:.1%} on {w['set']}" for label, w in found["worst"].items()))


def _print_smollm2(s: dict) -> None:
    d = s["distill"]
    print(f"\nSmolLM2-135M, recipe {s['recipe']}{' with ' + str(s['overrides']) if s.get('overrides') else ''} (prune: {s['prune']['shape_after']}, FLOPs "
          f"{s['prune']['flops_ratio']:.3f}; distill-self {d['steps']} steps in {d['seconds']} s, stopped by "
          f"{d['stopped']}; perplexity on {s['quality_windows']} held-out windows; 1x128 prefill, 16-token decode)")
    print("model | ppl | Δppl | prefill × | decode × | peak RSS MB")
    for r in s["rows"]:
        print(" | ".join([r["model"], f"{r['ppl']:.3f}", f"{r['delta_ppl']:+.1%}", _speed(r, "prefill"),
                          _speed(r, "decode"), f"{r['peak_rss_mb']:.0f}"]))
    sets = s.get("quality_sets", {"worst": {}, "sets": {}})  # runs before the held-out sets have none
    print("held-out set | teacher ppl | " + " | ".join(f"{label} ppl (Δ)" for label in sets["worst"]))
    for name, block in sets["sets"].items():
        print(" | ".join([name, f"{block['teacher_ppl']:.3f}"] + [f"{r['ppl']:.3f} ({r['delta_ppl']:+.1%})"
                                                                  for r in block["rows"].values()]))
    if s["gap_closed"] is not None:
        print(f"gap between pruned-only and teacher closed: {s['gap_closed']:.1%}; reloads {s['reloads']}; "
              f"{s['rounds']} rounds, load {s['load']}")
    if curve := s.get("validation_perplexity_curve"):
        print("tokens trained on | validation ppl (calibration split's held-back share)")
        for step, ppl, tokens in curve:
            print(f"{int(tokens):,} | {ppl:.3f}  (step {int(step)})")


def print_tables(results: dict) -> None:
    machine = results["machine"]
    print(f"machine: {machine['cpu_model']} ({machine['isa_class']}), load at the end {machine['load_average_1_5_15m']}")
    if m := results.get("minilm-small"):
        print(f"\nMiniLM-L6 student, recipe minilm-small ({m['steps']} steps in {m['seconds']} s, stopped by "
              f"{m['stopped']}): {m['parameters']:,} parameters ({m['parameters_ratio']:.3f} of "
              f"{m['parameters_teacher']:,}), FLOPs {m['flops_ratio']:.3f}, blocks {m['blocks']}/{m['blocks_teacher']}, "
              f"vocabulary {m['vocabulary_size']}, reloads {m['reloads']}")
        _print_encoder_shapes(m["shapes"])
        _print_sets(m.get("quality_sets"))
        a = m["model2vec"]
        print(f"model2vec {a['method']}: {a['parameters']:,} parameters, k-NN {a['knn_topic_accuracy']:.3f} "
              f"({a['accuracy_kept']:.1%} of the teacher), {a['seconds']} s")
    if c := results.get("minilm-small-corpus"):
        print(f"\nThe same recipe with {c['overrides']} ({c['steps']} steps in {c['seconds']} s): {c['parameters']:,} "
              f"parameters ({c['parameters_ratio']:.3f}), vocabulary {c['vocabulary_size']}")
        _print_encoder_shapes(c["shapes"])
        _print_sets(c.get("quality_sets"))
    if e := results.get("minilm-edge"):
        d = e["distill"]
        print(f"\nMiniLM-L6, recipe minilm-edge (prune FLOPs {e['prune']['flops_ratio']:.3f}, shape "
              f"{e['prune']['shape_after']}; distill-self {d['steps']} steps in {d['seconds']} s; stages "
              f"{e['stage_seconds']})")
        _print_encoder_shapes(e["shapes"])
        _print_sets(e.get("quality_sets"))
    for part in ("smollm2-shallow", "smollm2-small", "smollm2-small-half", "smollm2-small-augmented"):
        if s := results.get(part):
            _print_smollm2(s)
    if f := results.get("families"):
        print(f"\nLoss families on one MiniLM student shape ({f['student']}); teacher k-NN "
              f"{f['teacher_knn_topic_accuracy']:.3f}")
        print("method | steps | k-NN acc | kept | cos to teacher | last terms")
        for r in f["rows"]:
            print(" | ".join([r["method"], str(r["steps"]), f"{r['knn_topic_accuracy']:.3f}",
                              f"{r['accuracy_kept']:.1%}", f"{r['mean_teacher_cosine']:.4f}",
                              ", ".join(f"{k} {v:.4g}" for k, v in r["last_terms"].items())]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--print", action="store_true", help="print the stored tables and exit")
    parser.add_argument("--reuse", action="store_true",
                        help="measure again what an earlier run left in --work instead of training anew")
    parser.add_argument("--smoke", action="store_true",
                        help="check the plumbing in minutes: a few seconds of training, figures to a scratch file")
    args = parser.parse_args()
    args.overrides = {"distill.max_minutes": 0.1, "distill.calibration_samples": 64} if args.smoke else {}
    args.family_overrides = {"max_minutes": 0.1, "calibration_samples": 64} if args.smoke else {}
    results_file = Path(tempfile.gettempdir()) / "distillation-smoke.json" if args.smoke else RESULTS
    run_parts(PARTS, args, results_file, print_tables, "mp-bench-distill-")

if __name__ == "__main__":
    main()
