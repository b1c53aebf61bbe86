"""Tensor parallelism over FlashMHF's heads (mhfgen.parallel) on 2 gloo processes: the
sharded layer against the unsharded one, the meshes it refuses, and checkpoints
(torch.distributed.checkpoint) between sharded and unsharded layers and models."""

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

import mhfgen
from mhfgen.lm.model import CausalLM
from mhfgen.parallel import HEAD_PARAMETERS, parallelize_flashmhf
from mhfgen.parallel.launch import run_on_ranks
from mhfgen.parallel.parity import TPCase, tiny_lm_case, tp_layer_parity, wrap_model

CPU = torch.device("cpu")

#: (case, backend): GQA with norm through the kernels (interpreter); a bias and no norm,
#: Hkv = H, through the PyTorch path
TP_CASES = [
    (TPCase(), "triton"),
    (
        TPCase(
            d_model=32,
            n_heads=2,
            n_kv_heads=2,
            intermediate_size=48,
            n_experts=3,
            qk_norm=False,
            bias=True,
            seq=7,
        ),
        "torch",
    ),
]


def _tp_checks() -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    out = {"parity": [tp_layer_parity(case, CPU, backend=backend) for case, backend in TP_CASES]}
    layer = parallelize_flashmhf(
        TPCase().layer("triton", CPU, torch.float32), init_device_mesh("cpu", (2,))
    )
    out["local_shapes"] = {name: tuple(p.to_local().shape) for name, p in layer.named_parameters()}
    out["all_dtensors"] = all(isinstance(p, DTensor) for p in layer.parameters())
    refusals = {}
    mesh = init_device_mesh("cpu", (2,))
    attempts = {
        "kv_heads_1": lambda: parallelize_flashmhf(
            mhfgen.FlashMHF(32, 2, 32, 2, n_kv_heads=1), mesh
        ),
        "kv_heads_3": lambda: parallelize_flashmhf(mhfgen.FlashMHF(48, 3, 32, 2), mesh),
        "mesh_2d": lambda: parallelize_flashmhf(
            mhfgen.FlashMHF(32, 2, 32, 2), init_device_mesh("cpu", (1, 2))
        ),
        "not_flashmhf": lambda: parallelize_flashmhf(nn.Linear(4, 4), mesh),
        "no_projections": lambda: parallelize_flashmhf(
            mhfgen.FlashMHF(32, 2, 32, 2, projections=False), mesh
        ),
        "twice": lambda: parallelize_flashmhf(layer, mesh),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            refusals[name] = None
        except (TypeError, ValueError) as exc:
            refusals[name] = (type(exc).__name__, str(exc))
    out["refusals"] = refusals
    return out


@pytest.fixture(scope="module")
def tp_run():
    return run_on_ranks(_tp_checks, 2)


def test_sharded_layer_matches_unsharded(tp_run):
    for rank_result in tp_run:
        for result, (case, backend) in zip(rank_result["parity"], TP_CASES):
            assert result.ok, (backend, result.describe())
            expected = {"y", "dx"} | {
                f"grad:{n}" for n, _ in case.layer("torch", CPU, torch.float32).named_parameters()
            }
            assert set(result.errors) == expected


def test_local_shards_hold_whole_kv_head_groups(tp_run):
    # TPCase: d 64, H 4, Hkv 2, D 16, E 2, De 32; each of 2 ranks: heads 2, kv heads 1
    shapes = tp_run[0]["local_shapes"]
    assert shapes == {
        "router": (2, 16, 2),
        "key": (1, 2, 32, 16),
        "up": (1, 2, 32, 16),
        "value": (1, 2, 32, 16),
        "q_norm": (2, 16),
        "in_proj.weight": (32, 64),
        "out_proj.weight": (64, 32),
    }
    assert tp_run[0]["all_dtensors"]
    assert set(HEAD_PARAMETERS) <= set(shapes)


@pytest.mark.parametrize(
    "name, kind, message",
    [
        ("kv_heads_1", "ValueError", "mesh of size 2 does not divide the layer's n_kv_heads=1"),
        ("kv_heads_3", "ValueError", "mesh of size 2 does not divide the layer's n_kv_heads=3"),
        ("mesh_2d", "ValueError", "device_mesh must be 1-D"),
        ("not_flashmhf", "TypeError", "applies to mhfgen.FlashMHF layers, got Linear"),
        ("twice", "ValueError", "the layer is already sharded"),
        ("no_projections", "ValueError", "built with projections=False"),
    ],
)
def test_refusals(tp_run, name, kind, message):
    got = tp_run[0]["refusals"][name]
    assert got is not None, f"{name}: not refused"
    assert got[0] == kind and message in got[1], got


def _save_sharded(tp_dir: str, fsdp_dir: str, plain_dir: str) -> dict:
    """Rank side: save a TP-sharded layer and an FSDP2-sharded model; load an unsharded
    layer's checkpoint into a TP-sharded layer. Returns the full tensors to compare."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    layer = TPCase().layer("torch", CPU, torch.float32)
    layer_full = {k: v.clone() for k, v in layer.state_dict().items()}
    parallelize_flashmhf(layer, mesh)
    dcp.save(layer.state_dict(), checkpoint_id=tp_dir)

    torch.manual_seed(0)
    model = CausalLM(tiny_lm_case().model)
    model_full = {k: v.clone() for k, v in model.state_dict().items()}
    model = wrap_model(model, "fsdp2", CPU)
    dcp.save(get_model_state_dict(model), checkpoint_id=fsdp_dir)

    torch.manual_seed(5)  # other values, overwritten by the load
    loaded = parallelize_flashmhf(TPCase().layer("torch", CPU, torch.float32), mesh)
    state = loaded.state_dict()
    dcp.load(state, checkpoint_id=plain_dir)
    loaded_full = {k: v.full_tensor() for k, v in state.items()}
    dist.barrier()
    return {"layer": layer_full, "model": model_full, "loaded": loaded_full}


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_checkpoints_between_sharded_and_unsharded(tmp_path):
    torch.manual_seed(3)
    plain = TPCase().layer("torch", CPU, torch.float32)
    dcp.save(plain.state_dict(), checkpoint_id=str(tmp_path / "plain"))  # one process
    dirs = [str(tmp_path / name) for name in ("tp", "fsdp", "plain")]
    full = run_on_ranks(_save_sharded, 2, tuple(dirs))[0]

    # an unsharded checkpoint loaded into the TP-sharded layer: every shard in place
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(full["loaded"][name], value, rtol=0, atol=0, msg=name)

    # the TP-sharded layer's checkpoint into an unsharded FlashMHF, in this one process
    torch.manual_seed(9)
    layer = TPCase().layer("torch", CPU, torch.float32)
    state = layer.state_dict()
    dcp.load(state, checkpoint_id=dirs[0])
    assert state.keys() == full["layer"].keys()
    for name, value in full["layer"].items():
        torch.testing.assert_close(layer.state_dict()[name], value, rtol=0, atol=0, msg=name)

    # the FSDP2-sharded model's checkpoint into an unsharded CausalLM
    torch.manual_seed(9)
    model = CausalLM(tiny_lm_case().model)
    state = model.state_dict()
    dcp.load(state, checkpoint_id=dirs[1])
    for name, value in full["model"].items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)
