"""docs/PERFORMANCE.md's tables are rendered from benchmarks/results/*.json: the document
cannot drift from the results files, and the results files follow their format."""

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _renderer():
    return load_benchmark("render_performance")


def test_the_rendered_sections_match_the_results_files():
    r = _renderer()
    text = r.DOC.read_text()
    assert r.SECTION.search(text), "docs/PERFORMANCE.md has no marked results section"
    assert r.render(text, r.load()) == text, (
        "docs/PERFORMANCE.md is stale: run python3 benchmarks/render_performance.py"
    )


def test_every_results_table_is_shown_and_names_how_to_reproduce_it():
    r = _renderer()
    shown = {(m.group(2), m.group(3)) for m in r.SECTION.finditer(r.DOC.read_text())}
    for slug, doc in r.load().items():
        assert slug == r.gpu_slug(doc["gpu"])
        for name, table in doc["tables"].items():
            assert (slug, name) in shown, f"{slug}/{name} is not shown in docs/PERFORMANCE.md"
            assert table["command"].strip()


def test_a_stale_section_is_found_and_rewritten(tmp_path, capsys):
    r = _renderer()
    doc = tmp_path / "doc.md"
    doc.write_text(r.DOC.read_text().replace("| 370M | 693 |", "| 370M | 999 |"))
    assert r.main(["--doc", str(doc), "--check"]) == 1
    assert "999" in capsys.readouterr().out
    assert r.main(["--doc", str(doc)]) == 0
    assert doc.read_text() == r.DOC.read_text()


def test_the_format_is_checked(tmp_path):
    r = _renderer()
    (tmp_path / "x.json").write_text(
        json.dumps({"format": r.FORMAT, "gpu": "X", "tables": {"t": {"title": "t", "rows": []}}})
    )
    with pytest.raises(r.ResultsError, match="lacks"):
        r.load(tmp_path)


def test_an_mhfgen_bench_document_becomes_a_results_table(tmp_path):
    r = _renderer()
    base = dict(
        gpu="NVIDIA H100 80GB HBM3",
        torch="2.11.0",
        triton="3.6.0",
        date="2026-01-02T03:04:05+00:00",
        dtype="bfloat16",
        status="ok",
        shape="(1024, 8, 128, 2816, 11)",
        tokens=16384,
    )
    bench = {
        "format": "mhfgen-bench/1",
        "rows": [
            dict(base, method="mhfgen", **{"pass": "fwd"}, tflops=650.4, time_vs_mhfgen=1.0),
            dict(base, method="torch", **{"pass": "fwd"}, tflops=108.2, time_vs_mhfgen=6.013),
            dict(
                base,
                method="swiglu",
                **{"pass": "fwd"},
                status="oom",
                tflops=None,
                time_vs_mhfgen=None,
            ),
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    results = tmp_path / "results"
    results.mkdir()
    written = r.add_bench(path, "bench-370M", results)
    assert written.name == "h100_80gb_hbm3.json"
    table = r.load(results)["h100_80gb_hbm3"]["tables"]["bench-370M"]
    assert table["date"] == "2026-01-02" and table["torch"] == "2.11.0"
    assert [(row["metric"], row["value"], row.get("ratio")) for row in table["rows"]] == [
        ("mhfgen fwd", 650, None),
        ("torch fwd", 108, 6.01),
    ]
    assert "| (1024, 8, 128, 2816, 11), 16384 | 650 | 108 (6.01x) |" in r.render_table(
        r.load(results)["h100_80gb_hbm3"], "bench-370M"
    )


def test_a_comparison_run_becomes_the_comparison_and_layers_tables(tmp_path):
    """benchmarks/bench_h200.py's table.csv -> 'comparison' (mhfgen's forward, forward +
    backward and peak, each other method's forward + backward with its time over
    mhfgen's, and the authors' kernel's forward as well) and 'layers' (the SwiGLU layer's
    times over the FlashMHF layer's)."""
    import csv

    r = _renderer()
    base = dict(
        gpu="NVIDIA H100 80GB HBM3",
        torch="2.11.0",
        triton="3.6.0",
        date="2026-01-02T03:04:05+00:00",
        status="ok",
        shape="(2048, 16, 128, 5632, 22)",
        peak_mib=216.0,
    )
    rows = [
        dict(base, method="mhfgen", **{"pass": "fwd"}, tflops=700.2, median_ms=1.0),
        dict(base, method="mhfgen", **{"pass": "fwdbwd"}, tflops=370.0, median_ms=2.0),
        dict(base, method="authors", **{"pass": "fwd"}, tflops=373.0, median_ms=1.88),
        dict(base, method="authors", **{"pass": "fwdbwd"}, tflops=243.0, median_ms=3.05),
        dict(base, method="torch_compile", **{"pass": "fwd"}, tflops=230.0, median_ms=3.0),
        dict(base, method="torch_compile", **{"pass": "fwdbwd"}, tflops=172.6, median_ms=4.3),
        dict(base, method="swiglu", **{"pass": "fwdbwd"}, status="oom", tflops="", median_ms=""),
        dict(base, method="layer_mhfgen", **{"pass": "fwd"}, tflops=650, median_ms=1.2),
        dict(base, method="layer_mhfgen", **{"pass": "fwdbwd"}, tflops=390, median_ms=3.0),
        dict(base, method="layer_swiglu", **{"pass": "fwd"}, tflops=590, median_ms=1.08),
        dict(base, method="layer_swiglu", **{"pass": "fwdbwd"}, tflops=585, median_ms=1.59),
    ]
    path = tmp_path / "table.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    results = tmp_path / "results"
    results.mkdir()
    assert r.add_compare(path, results).name == "h100_80gb_hbm3.json"
    doc = r.load(results)["h100_80gb_hbm3"]
    core = [(x["metric"], x["value"], x.get("ratio")) for x in doc["tables"]["comparison"]["rows"]]
    assert core == [
        ("mhfgen fwd", 700, None),
        ("mhfgen fwd+bwd", 370, None),
        ("mhfgen fwd+bwd peak", 216, None),
        ("authors' kernel fwd", 373, 1.88),
        ("authors' kernel fwd+bwd", 243, 1.52),
        ("torch.compile fwd+bwd", 173, 2.15),
    ]
    assert {x["row"] for x in doc["tables"]["layers"]["rows"]} == {"1.3B"}
    assert "| 1.3B | 650 | 390 | 216 | 590 (0.9x) | 585 (0.53x) | 216 |" in r.render_table(
        doc, "layers"
    )
    # a second run under another name: its core rows only, beside the first run's tables,
    # citing the command it is given
    again = r.add_compare(path, results, "comparison-helion", "python3 bench_h200.py OUT --x")
    doc = r.load(results)[again.stem]
    assert set(doc["tables"]) == {"comparison", "layers", "comparison-helion"}
    assert doc["tables"]["comparison-helion"]["rows"] == doc["tables"]["comparison"]["rows"]
    assert doc["tables"]["comparison-helion"]["command"] == "python3 bench_h200.py OUT --x"


def test_a_decode_suite_document_becomes_a_results_table(tmp_path):
    r = _renderer()
    env = dict(gpu="NVIDIA H200", torch="2.11.0", triton="3.6.0", date="2026-01-02T03:04:05")
    row = dict(shape="1.3B", tokens=8, weight_bytes=1, tb_per_s=1.0, config="c")
    doc = {
        "suite": "decode",
        "environment": env,
        "copy_tb_per_s": 4.25,
        "rows": [
            dict(row, weights="dense", us=25.5, of_copy=0.642, speedup=None),
            dict(row, weights="fp8", us=14.2, of_copy=0.601, speedup=1.8),
        ],
    }
    path = tmp_path / "decode.json"
    path.write_text(json.dumps(doc))
    results = tmp_path / "results"
    results.mkdir()
    assert r.add_bench(path, "decode-suite", results).name == "h200.json"
    text = r.render_table(r.load(results)["h200"], "decode-suite")
    assert "| 1.3B, 8 | 25.5 | 64.2 | 14.2 | 60.1 | 1.8 |" in text
    assert "--suite decode" in text and "4.25 TB/s" in text


def test_a_pdl_ab_becomes_a_results_table_and_a_mismatch_is_refused(tmp_path):
    """fp8_fwd_check.py --pdl rows: a row per (shape, tokens, what runs before each call),
    a column per weight format with and without pdl (read from the config's describe),
    the GEMM and router alone left out; a file whose pdl outputs differed is refused."""
    r = _renderer()
    base = dict(kind="pdl", shape="1.3B", tokens=8, bitwise=True)
    rows = [
        dict(base, method="16-bit weights", config="dispatched", us=28.0),
        dict(base, method="16-bit pdl on", config="BM16 pdl", us=29.0),
        dict(base, method="FP8 dispatched, router between", config="swap16 pdl", us=21.0),
        dict(base, method="FP8 pdl off, router between", config="swap16", us=22.5),
        dict(base, method="GEMM alone", config="mm", us=5.0),
        dict(base, kind="decode", method="FP8 W8A8 split", config="x", us=1.0),
    ]
    doc = dict(gpu="NVIDIA H200", torch="2.11.0", triton="3.6.0", date="2026-01-02", rows=rows)
    path = tmp_path / "pdl.json"
    path.write_text(json.dumps(doc))
    results = tmp_path / "results"
    results.mkdir()
    assert r.add_pdl(path, "decode-pdl", results).name == "h200.json"
    table = r.load(results)["h200"]["tables"]["decode-pdl"]
    assert table["date"] == "2026-01-02"
    got = {(row["row"], row["metric"]): row["value"] for row in table["rows"]}
    assert got == {
        ("1.3B, 8, back to back", "16-bit, no pdl"): 28.0,
        ("1.3B, 8, back to back", "16-bit, pdl"): 29.0,
        ("1.3B, 8, router between", "FP8, pdl"): 21.0,
        ("1.3B, 8, router between", "FP8, no pdl"): 22.5,
    }
    rows[1]["bitwise"] = False
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="differed"):
        r.add_pdl(path, "decode-pdl", results)


def test_the_script_has_help():
    r = _renderer()
    with pytest.raises(SystemExit) as exc:
        r.main(["--help"])
    assert exc.value.code == 0


def _lm_summary(ffn, tokens_per_s, graph, device="NVIDIA H100 80GB HBM3"):
    return {
        "name": ffn,
        "ffn": ffn,
        "steps_done": 1000,
        "tokens_per_s": tokens_per_s,
        "peak_mem_mib": 2400.4 if ffn == "flashmhf" else 3900.0,
        "final_val_loss": 0.86141 if ffn == "flashmhf" else 0.7787,
        "train": {"cuda_graph": graph},
        "environment": {
            "device": device,
            "torch": "2.11.0",
            "triton": "3.6.0",
            "date": "2026-01-02",
        },
    }


def test_train_lm_runs_become_the_train_lm_table(tmp_path):
    """examples/train_lm.py's summaries.json files -> 'train-lm': a row per model and step
    form, FlashMHF's tokens/s over SwiGLU's of the same run."""
    r = _renderer()
    paths = []
    for graph, (flash, swiglu) in ((True, (775263.3, 771863.0)), (False, (493099.0, 653723.0))):
        path = tmp_path / f"{graph}.json"
        path.write_text(
            json.dumps(
                [_lm_summary("flashmhf", flash, graph), _lm_summary("swiglu", swiglu, graph)]
            )
        )
        paths.append(path)
    written = r.add_train_lm(paths, tmp_path)
    table = json.loads(written.read_text())["tables"]["train-lm"]
    rows = {(row["row"], row["metric"]): row for row in table["rows"]}
    assert rows[("FlashMHF, CUDA graph", "throughput")]["ratio"] == 1.0
    assert rows[("FlashMHF, eager", "throughput")]["ratio"] == 0.75
    assert "ratio" not in rows[("SwiGLU (matched parameters), eager", "throughput")]
    assert rows[("FlashMHF, eager", "peak")]["value"] == 2400
    assert table["date"] == "2026-01-02" and "1000 steps" in table["title"]
    assert "| FlashMHF, CUDA graph | 775263 (1.00x) |" in r.render_table(
        json.loads(written.read_text()), "train-lm"
    )
    paths[1].write_text(
        json.dumps([_lm_summary("flashmhf", 1.0, False, "cpu"), _lm_summary("swiglu", 1.0, False)])
    )
    with pytest.raises(r.ResultsError, match="no GPU environment"):
        r.add_train_lm(paths, tmp_path)
    paths[1].write_text(json.dumps([_lm_summary("flashmhf", 1.0, False)]))
    with pytest.raises(r.ResultsError, match="both FFNs"):
        r.add_train_lm(paths, tmp_path)
