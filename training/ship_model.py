"""Ship a trained model into the package: weights, validated ONNX (teacher) and a model card.

    python training/ship_model.py RUN/teacher_fastflownet.pt --notes NOTES.md \
        [--data ../shared/data/gt-dev/*] [--out mdflow_ros/weights] [--half] [--int8]
    python training/ship_model.py --record-reference mdflow_ros/weights/teacher_fastflownet.pt [...]

Writes, in ``--out``, the model file under its standard name (``teacher_fastflownet.pt`` or
``student_raft.pt``) with its lineage folded into ``meta["lineage"]`` (every stage it came
from: stage, steps, data names, config, SHA-256; local paths reduced to file names), and for a
teacher ``teacher_fastflownet.onnx``: the deployed graph with confidence, which ONNX Runtime
then runs without exporting (see ``onnx_export.onnx_for``), refused if it differs from
PyTorch beyond ``export_trt``'s parity limit. Last, ``<name>.md``: the model card, with EPE and
Fl-all measured here on the held-out synthetic set and on every ``--data`` set (zero flow
beside it), and the hand-written ``--notes`` (targets, known weaknesses) appended.
``--half`` stores the weights as float16 (half the file; they load as float32): the ONNX file
and every metric then come from the rounded weights, as users get them. ``--int8`` also writes
``<name>.int8.onnx`` (training/quantize_onnx.py) from the shipped weights; an int8 file already in
``--out`` from other weights is reported as stale (the tests refuse it). Last of all
``<name>.reference.json`` (training/reference.py): what users get from each shipped file on fixed
inputs, which the tests compare with. ``--record-reference`` re-records only that, for files
already shipped.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from mdflow_ros.files import file_sha256
from mdflow_ros.inference import FlowEstimator
from mdflow_ros.inference.onnx_export import export_onnx
from mdflow_ros.inference.onnx_files import META_SOURCE, onnx_metadata
from mdflow_ros.models.model_file import build_model, load_model, load_model_file, save_model_file
from training.export_trt import onnx_parity
from training.evaluate import GroundTruthSet, benchmark_sets, estimator_fn, evaluate, synthetic_set, zero_flow
from training.parity import describe_parity
from training.quantize_onnx import quantize
from training.reference import ReferenceInputs, int8_path, record

SHIPPED_NAMES = {"fastflownet": "teacher_fastflownet", "raft": "student_raft"}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "mdflow_ros" / "weights"


def lineage(path: Path) -> list[dict[str, Any]]:
    """The stages a model file came from, oldest first, following ``meta.init`` while the files exist
    unchanged (by SHA-256); an already shipped file carries its own ``meta.lineage``."""
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    current: Path | None = path
    expected_sha = file_sha256(path)
    while current is not None and current.is_file() and str(current) not in seen:
        seen.add(str(current))
        if file_sha256(current) != expected_sha:
            chain.insert(0, {"stage": "unknown: the file changed since", "steps": None, "sha256": expected_sha,
                             "data": [], "frozen": None, "config": {}})
            break
        meta = load_model_file(current).meta
        if "lineage" in meta:
            return list(meta["lineage"]) + chain
        chain.insert(0, {
            "stage": meta.get("stage"), "steps": meta.get("step"), "sha256": file_sha256(current),
            "data": [Path(p).name for p in meta.get("data", [])],
            "frozen": _named_ref(meta.get("frozen")), "config": meta.get("config", {}),
        })
        init = meta.get("init")
        current, expected_sha = (Path(init["path"]), init["sha256"]) if init else (None, "")
    return chain


def _named_ref(ref: dict[str, str] | None) -> dict[str, str] | None:
    """A {path, sha256} reference with the path reduced to its file name."""
    return None if ref is None else {"file": Path(ref["path"]).name, "sha256": ref["sha256"]}


def check_parity(model: Path, onnx: Path) -> float:
    """Max |flow_ORT - flow_PyTorch| in pixels, by export_trt's parity check; ValueError beyond its fp32 limits."""
    result = onnx_parity(load_model(model), onnx, True, (384, 512))["onnxruntime"]
    if not result["passed"]:
        raise ValueError(f"{onnx}: ONNX Runtime differs from PyTorch beyond its limits; "
                         f"{describe_parity('ONNX Runtime', result)}")
    return result["max_flow_px"]


def metrics_table(model: Path, sets: list[GroundTruthSet]) -> str:
    """Markdown table: EPE / Fl-all of the model (PyTorch backend) and of zero flow per set."""
    fn = estimator_fn(FlowEstimator(backend="pytorch", model=model, confidence=False, threads=2))
    rows = ["| set | pairs | EPE (px) | Fl-all | zero-flow EPE |", "|---|---|---|---|---|"]
    for dataset in sets:
        ours, zero = evaluate(fn, dataset), evaluate(zero_flow, dataset)
        rows.append(f"| {dataset.name} | {len(dataset.pairs)} | {ours['epe']:.2f} | {ours['fl_all']:.1f} % | "
                    f"{zero['epe']:.2f} |")
    return "\n".join(rows)


def model_card(name: str, model: Path, arch: str, stages: list[dict[str, Any]], metrics: str, notes: str,
               onnx: Path | None, parity_px: float | None) -> str:
    """The model card's markdown."""
    weights = load_model_file(model).state_dict
    params = sum(t.numel() for t in weights.values())
    stored = sorted({str(t.dtype).removeprefix("torch.") for t in weights.values() if t.is_floating_point()})
    lines = [f"# Model card: `{name}`", "",
             f"- Architecture: {arch} ({params:,} parameters, stored as {', '.join(stored)}); file `{model.name}`, "
             f"{model.stat().st_size / 1e6:.1f} MB, SHA-256 `{file_sha256(model)}`.",
             f"- Shipped {datetime.date.today().isoformat()} with `training/ship_model.py`."]
    if onnx is not None:
        lines.append(f"- `{onnx.name}`: deployed graph with confidence (opset 17, dynamic size), "
                     f"ONNX Runtime vs PyTorch max difference {parity_px:.1e} px (export_trt's parity pair).")
    lines += ["", "## How it was trained", "", "| # | stage | steps | data (names; used in place, not shipped) |",
              "|---|---|---|---|"]
    for i, s in enumerate(stages, 1):
        data = ", ".join(s["data"]) or "synthetic source only (real photos under known motion, generated)"
        frozen = f"; frozen partner `{s['frozen']['file']}`" if s.get("frozen") else ""
        lines.append(f"| {i} | {s['stage']} | {s['steps']} | {data}{frozen} |")
    lines += ["", "Every stage's full config is in the model file (`meta['lineage']`); the last one:", "",
              "```yaml", yaml.safe_dump(stages[-1]["config"], sort_keys=False).rstrip(), "```", "",
              "## Accuracy (measured when shipped, PyTorch backend, forward flow)", "", metrics, "",
              "Peers (OpenCV DIS, Farneback, DeepFlow, RLOF) and speed: `python -m bench.accuracy` "
              "(`bench/results/accuracy.md`; re-run it after shipping a model).", "",
              notes.rstrip(), ""]
    return "\n".join(lines)


def ship(model: Path, notes: str, data: list[str], out: Path, synthetic: int = 16, half: bool = False,
         int8: bool = False, reference_inputs: ReferenceInputs | None = None) -> list[Path]:
    """Write the shipped model file, its ONNX (teacher; int8 too with ``int8``), its card and its
    reference into ``out``; returns the paths.

    half: store the weights as float16; the ONNX files and the metrics use the stored weights.
    reference_inputs: the reference's inputs (default: training/reference.py's for the architecture).
    """
    source = load_model_file(model)
    name = SHIPPED_NAMES[source.arch]
    out.mkdir(parents=True, exist_ok=True)
    stages = lineage(model)
    meta = {k: v for k, v in source.meta.items() if k not in ("data", "init", "parent", "frozen")}
    meta["lineage"] = stages
    shipped = out / f"{name}.pt"
    save_model_file(shipped, build_model(source, model), meta, torch.float16 if half else None)
    written = [shipped]
    onnx, parity = None, None
    if source.arch == "fastflownet":
        onnx = export_onnx(load_model(shipped), out / f"{name}.onnx", True, source_sha256=file_sha256(shipped))
        parity = check_parity(shipped, onnx)
        written.append(onnx)
        if int8:
            written.append(quantize(shipped, int8_path(shipped)))
        elif (int8_path(shipped).is_file()
              and onnx_metadata(int8_path(shipped)).get(META_SOURCE) != file_sha256(shipped)):
            print(f"ship_model: warning: {int8_path(shipped)} was made from other weights; re-quantize it "
                  "(--int8) or delete it", file=sys.stderr)
    sets = ([synthetic_set(synthetic, (384, 512), 1234)] if synthetic else []) + benchmark_sets(data)
    card = out / f"{name}.md"
    card.write_text(model_card(name, shipped, source.arch, stages, metrics_table(shipped, sets), notes, onnx, parity))
    written.append(card)
    written.append(record(shipped, reference_inputs))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, nargs="?",
                        help="trained model file (RUN/teacher_fastflownet.pt or RUN/student_raft.pt)")
    parser.add_argument("--notes", type=Path, help="markdown appended to the card: targets, known weaknesses")
    parser.add_argument("--record-reference", type=Path, nargs="+", metavar="SHIPPED",
                        help="only re-record <name>.reference.json for these shipped model files")
    parser.add_argument("--data", nargs="*", default=[], help="ground-truth folders to measure on")
    parser.add_argument("--synthetic", type=int, default=16, help="held-out synthetic pairs (0: none)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the file)")
    parser.add_argument("--int8", action="store_true", help="teacher: also write the int8 graph")
    args = parser.parse_args(argv)
    if args.record_reference is None and (args.model is None or args.notes is None):
        parser.error("give the trained model file and --notes (or --record-reference SHIPPED...)")
    torch.set_num_threads(2)
    try:
        paths = ([record(path) for path in args.record_reference] if args.record_reference else
                 ship(args.model, args.notes.read_text(), args.data, args.out, args.synthetic, args.half, args.int8))
        for path in paths:
            print(path)
    except (ValueError, FileNotFoundError) as err:
        print(f"ship_model: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
