"""CPU smoke tests of mhfgen.lm: data split and batches, parameter matching, the schedule, a
tiny model that learns with each FFN, and one training step with backend="triton" (Triton's
interpreter, fp32) against backend="torch"."""

from __future__ import annotations

import builtins
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import mhfgen.ops
from mhfgen.layers import quantize_fp8_model
from mhfgen.lm import BatchSampler, ModelConfig, TrainConfig, load_corpus, train
from mhfgen.lm.data import SEPARATOR, is_validation, source_files
from mhfgen.lm.experiment import RunSpec, plot_or_explain, run_all
from mhfgen.lm.model import (
    CausalLM,
    count_parameters,
    flashmhf_layer_params,
    matched_swiglu_intermediate,
)
from mhfgen.lm.report import curve_difference, read_curve_csv
from mhfgen.lm.train import lr_at, make_optimizer, train_step

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ModelConfig(
    ffn="flashmhf",
    d_model=64,
    n_layers=2,
    n_heads=2,
    mhf_heads=2,
    mhf_intermediate=128,
    mhf_experts=2,
    backend="torch",
    max_seq_len=64,
)
TINY_TRAIN = TrainConfig(
    steps=40,
    batch_size=8,
    seq_len=64,
    lr=3e-3,
    warmup_steps=5,
    eval_every=20,
    eval_batches=2,
    log_every=10,
    device="cpu",
)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(max_bytes=1_000_000)


def test_stdlib_corpus_is_split_by_file(corpus):
    assert corpus.train.dtype == torch.uint8 and corpus.val.dtype == torch.uint8
    assert corpus.train_files > corpus.val_files >= 1
    assert corpus.train.numel() + corpus.val.numel() >= 1_000_000
    again = load_corpus(max_bytes=1_000_000)
    assert torch.equal(again.train, corpus.train) and torch.equal(again.val, corpus.val)


def test_split_follows_path_hash_and_skips_site_packages(tmp_path):
    names = [f"pkg{i % 3}/mod{i}.py" for i in range(60)]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"x = {name!r}\n")
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "third_party.py").write_text("third = 1\n")
    found = [p.relative_to(tmp_path).as_posix() for p in source_files(tmp_path)]
    assert found == sorted(names)
    val_names = [n for n in names if is_validation(n, 20.0)]
    assert 0 < len(val_names) < len(names)
    c = load_corpus(tmp_path, val_percent=20.0)
    assert (c.train_files, c.val_files) == (len(names) - len(val_names), len(val_names))
    val_text = bytes(c.val.tolist())
    assert val_text == SEPARATOR.join(f"x = {n!r}\n".encode() for n in sorted(val_names))
    assert b"third" not in bytes(c.train.tolist())


def test_batches_are_seeded_windows_with_shifted_targets(corpus):
    a = BatchSampler(corpus.train, 4, 32, seed=7).batches(3)
    b = BatchSampler(corpus.train, 4, 32, seed=7).batches(3)
    c = BatchSampler(corpus.train, 4, 32, seed=8).next()
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == ya.shape == (4, 32) and xa.dtype == torch.int64
        assert torch.equal(xa[:, 1:], ya[:, :-1])
    assert not torch.equal(a[0][0], c[0])


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(),  # the comparison model of docs/TRAINING.md
        ModelConfig(
            d_model=768, n_layers=2, n_heads=12, mhf_heads=8, mhf_intermediate=2048, mhf_experts=8
        ),  # the paper's 128M layer shape
    ],
)
def test_swiglu_width_matches_flashmhf_parameters(cfg):
    width = matched_swiglu_intermediate(cfg)
    with torch.device("meta"):
        flash = count_parameters(CausalLM(replace(cfg, ffn="flashmhf")))
        swiglu = count_parameters(CausalLM(replace(cfg, ffn="swiglu")))
    assert flash["other"] == swiglu["other"]
    per_layer = flashmhf_layer_params(
        cfg.d_model, cfg.mhf_heads, cfg.mhf_intermediate, cfg.mhf_experts
    )
    assert flash["ffn"] == cfg.n_layers * per_layer
    assert swiglu["ffn"] == cfg.n_layers * 3 * cfg.d_model * width
    assert abs(flash["total"] - swiglu["total"]) / flash["total"] < 1e-3
    # equal parameters also means equal FFN FLOPs: 6 d I_s vs 6 d I + 4 d^2
    flash_flops = 6 * cfg.d_model * cfg.mhf_intermediate + 4 * cfg.d_model**2
    assert abs(6 * cfg.d_model * width - flash_flops) / flash_flops < 5e-3


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=111, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, device="cpu")
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(0.55e-3)  # half way: the mean of peak and floor
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("ffn", ["flashmhf", "swiglu"])
def test_tiny_model_learns(corpus, ffn):
    cfg = replace(TINY_TRAIN, serve_fp8=ffn == "flashmhf")
    result = train(ffn, replace(TINY, ffn=ffn), cfg, corpus, progress=False)
    s = result.summary
    train_losses = [r["train_loss"] for r in result.rows[1:]]
    assert len(train_losses) == TINY_TRAIN.steps == s["steps_done"]
    assert train_losses[0] == pytest.approx(math.log(256), abs=0.3)
    assert sum(train_losses[-5:]) / 5 < train_losses[0] - 1.5
    val = [r["val_loss"] for r in result.rows if r["val_loss"] is not None]
    assert [r["step"] for r in result.rows if r["val_loss"] is not None] == [0, 20, 40]
    assert val[-1] < val[0] - 1.5 and s["final_val_loss"] == val[-1]
    assert s["tokens"] == 40 * 8 * 64 and s["tokens_per_s"] > 0 and not s["stopped_early"]
    if ffn == "flashmhf":  # served in FP8: the loss moves, by less than 1%
        assert s["fp8_val_loss"] != s["final_val_loss"]
        assert abs(s["fp8_val_loss_change"]) < 0.01
    else:
        assert "fp8_val_loss" not in s


def test_serve_fp8_needs_flashmhf(corpus):
    cfg = replace(TINY_TRAIN, serve_fp8=True)
    with pytest.raises(ValueError, match="serve_fp8 needs a FlashMHF model"):
        train("swiglu", replace(TINY, ffn="swiglu"), cfg, corpus, progress=False)


def _tiny_triton_pair(backend: str) -> tuple[CausalLM, torch.optim.Optimizer]:
    cfg = replace(
        TINY, d_model=32, n_layers=1, mhf_intermediate=64, backend=backend, max_seq_len=16
    )
    torch.manual_seed(0)
    model = CausalLM(cfg)
    return model, make_optimizer(model, TrainConfig(lr=1e-2, device="cpu"))


def test_triton_step_matches_torch_in_fp32(corpus, monkeypatch):
    kernel_calls = []
    real_op = mhfgen.ops.flash_mhf
    monkeypatch.setattr(mhfgen.ops, "flash_mhf", lambda *a: kernel_calls.append(1) or real_op(*a))
    x, y = BatchSampler(corpus.train, 2, 16, seed=3).next()
    cfg = TrainConfig(steps=4, lr=1e-2, warmup_steps=1, device="cpu")
    grads, params, losses = {}, {}, {}
    for backend in ("torch", "triton"):
        model, optimizer = _tiny_triton_pair(backend)
        loss = model(x, y)[1]
        loss.backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.zero_grad(set_to_none=True)
        losses[backend] = train_step(model, optimizer, x, y, 0, cfg)[0].item()
        params[backend] = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert len(kernel_calls) == 2  # the triton model's two forwards ran the kernels
    assert losses["triton"] == pytest.approx(losses["torch"], rel=1e-5)
    ffn_grads = [n for n in grads["torch"] if ".ffn." in n]
    assert {n.rsplit(".", 1)[-1] for n in ffn_grads} >= {"key", "up", "value", "router"}
    for name, want in grads["torch"].items():
        got = grads["triton"][name]
        err = (got - want).norm() / want.norm().clamp_min(1e-12)
        assert err < 1e-4, f"grad of {name}: relative error {err:.2e}"
    for name, want in params["torch"].items():
        # AdamW's first step moves each weight by about +-lr (g / |g|): a wrong gradient sign
        # shows as 2 lr; 1e-3 lr leaves room for weights whose gradient is near zero
        torch.testing.assert_close(
            params["triton"][name],
            want,
            rtol=0,
            atol=1e-3 * 1e-2,
            msg=lambda m, n=name: f"{n} after one step: {m}",
        )


def test_autocast_flashmhf_casts_its_weights_and_keeps_fp32_grads():
    """Under autocast Q leaves in_proj in bf16 and the layer casts its fp32 K/U/V to it
    (FlashMHF.expert_weights): the core runs in bf16, the parameters keep fp32 gradients."""
    model = CausalLM(replace(TINY, n_layers=1))
    x = torch.randint(0, 256, (2, 16))
    ffn = model.blocks[0].ffn
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.randn(2, 16, TINY.d_model)
        out = ffn(h)
        loss = model(x, x)[1]
    assert out.dtype == torch.bfloat16
    loss.backward()
    for w in (ffn.key, ffn.up, ffn.value):
        assert w.dtype == torch.float32 and w.grad is not None and w.grad.abs().sum() > 0


def test_autocast_runs_a_model_with_fp8_experts():
    model = CausalLM(replace(TINY, n_layers=1)).eval()
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        dense = model(x, x)[1]
        assert quantize_fp8_model(model) == 1
        served = model(x, x)[1]
    assert served.isfinite() and abs(served - dense) < 0.01 * dense


def test_stop_after_keeps_the_schedule(corpus):
    cfg = replace(TINY_TRAIN, steps=10, stop_after=4, eval_every=100)
    result = train("stop", replace(TINY, ffn="swiglu", n_layers=1), cfg, corpus, progress=False)
    assert result.summary["steps_done"] == 4
    assert [r["lr"] for r in result.rows[1:]] == [lr_at(s, cfg) for s in range(4)]
    assert result.rows[-1]["val_loss"] is not None


def test_run_all_writes_curves_and_survives_a_missing_matplotlib(corpus, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    cfg = replace(TINY_TRAIN, steps=6, eval_every=3)
    specs = [
        RunSpec("a", replace(TINY, ffn="swiglu", n_layers=1), cfg),
        RunSpec("b", replace(TINY, ffn="swiglu", n_layers=1), cfg),
    ]
    summaries, curves = run_all(specs, corpus, tmp_path, progress=False)
    assert [s["name"] for s in summaries] == ["a", "b"]
    rows = read_curve_csv(tmp_path / "a.csv")
    assert [r["step"] for r in rows] == list(range(7))
    assert rows[0]["train_loss"] is None and rows[3]["val_loss"] is not None
    assert (tmp_path / "summaries.json").is_file() and not (tmp_path / "loss.png").exists()
    assert plot_or_explain(curves, tmp_path / "x.png", "t") is None
    # same seed, same data: identical curves
    diff = curve_difference(curves["a"], curves["b"])
    assert diff["train_loss"]["max_abs_diff"] == 0.0 and diff["train_loss"]["steps_compared"] == 6
    assert diff["val_loss"]["mean_abs_diff"] == 0.0 and diff["val_loss"]["steps_compared"] == 3


def test_train_lm_script_runs_both_ffns(tmp_path, capsys):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import train_lm
    finally:
        sys.path.remove(str(EXAMPLES))
    train_lm.main(
        [
            "--d-model",
            "32",
            "--layers",
            "1",
            "--heads",
            "2",
            "--mhf-heads",
            "2",
            "--mhf-intermediate",
            "64",
            "--mhf-experts",
            "2",
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--seq-len",
            "16",
            "--eval-every",
            "3",
            "--eval-batches",
            "1",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--max-bytes",
            "300000",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--serve-fp8",
        ]
    )
    out = capsys.readouterr().out
    assert "flashmhf:" in out and "swiglu:" in out and "| swiglu |" in out
    assert out.count("(FP8: ") == 1  # the FlashMHF run only
    assert (tmp_path / "flashmhf-auto.csv").is_file() and (tmp_path / "swiglu.csv").is_file()


def test_curve_difference_finds_the_largest_gap():
    a = [{"step": s, "train_loss": l, "val_loss": None} for s, l in ((1, 5.0), (2, 4.0), (3, 3.0))]
    b = [{"step": s, "train_loss": l, "val_loss": None} for s, l in ((1, 5.1), (2, 4.5), (4, 1.0))]
    diff = curve_difference(a, b)["train_loss"]
    assert diff["steps_compared"] == 2 and diff["at_step"] == 2
    assert diff["max_abs_diff"] == pytest.approx(0.5)
    assert diff["mean_abs_diff"] == pytest.approx(0.3) and diff["first_abs_diff"] == pytest.approx(
        0.1
    )


def test_cuda_graph_is_ignored_off_cuda(corpus):
    """cuda_graph asks for CUDA-graph steps; a CPU run trains eagerly, step for step."""
    base = replace(TINY_TRAIN, steps=6, eval_every=100)
    runs = [
        train("g", replace(TINY, n_layers=1), replace(base, cuda_graph=g), corpus, progress=False)
        for g in (True, False)
    ]
    losses = [[r["train_loss"] for r in run.rows] for run in runs]
    assert losses[0] == losses[1] and runs[0].summary["train"]["cuda_graph"]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("ffn", ["flashmhf", "swiglu"])
def test_graphed_steps_train_as_eager_steps(ffn):
    """Eight steps from one initialisation on the same batches, eager and replayed from a
    CUDA graph (the Gluon kernels at D = 64 for FlashMHF): the same losses and parameters,
    to bf16 rounding and the atomic adds' order."""
    from mhfgen.lm.graphed import GraphedStep

    mc = replace(TINY, ffn=ffn, backend="auto", d_model=128, mhf_intermediate=256)
    cfg = replace(TINY_TRAIN, device="cuda")
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 256, (8, 64), generator=gen).cuda() for _ in range(8)]
    results = []
    for graph in (False, True):
        torch.manual_seed(0)
        model = CausalLM(mc).cuda()
        optimizer = make_optimizer(model, cfg)
        graphed = GraphedStep(model, torch.bfloat16) if graph else None
        losses = [
            train_step(model, optimizer, x, x, s, cfg, graphed)[0].item()
            for s, x in enumerate(batches)
        ]
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    (eager, eager_params), (graphed_losses, graphed_params) = results
    assert graphed_losses == pytest.approx(eager, rel=2e-2)
    assert graphed_losses[-1] < graphed_losses[0]  # the replays train: gradients are fresh
    for a, b in zip(eager_params, graphed_params):
        torch.testing.assert_close(b, a, rtol=5e-2, atol=5e-3)
    with pytest.raises(ValueError, match="replays batches of shape"):
        graphed(batches[0][:4], batches[0][:4])
