"""The built-in configs: valid and within the shared memory estimate for every spec."""

import pytest
from cases import KERNELS, Dkv, Dq, Fwd

from mhfgen.registry import default_config
from mhfgen.resources import fits, shared_memory_estimate
from mhfgen.spec import KernelSpec
from mhfgen.tiling import cdiv
from mhfgen.variants._triton import pick_block_n


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("head_dim", [16, 96, 128, 200, 256])
@pytest.mark.parametrize("tokens", [1, 8, 16384])
def test_gpu_defaults_fit_shared_memory(kernel, dtype, head_dim, tokens):
    spec = KernelSpec(16, 4, head_dim, 22, 256, dtype, "sm90")
    config = default_config(kernel, spec, tokens, 132)
    config.check_for(spec)
    assert fits(kernel, spec, config), shared_memory_estimate(kernel, spec, config)


def test_estimate_matches_measured_triton_allocations():
    # Required bytes Triton 3.6 reported on an H200 for the 1.3B spec (bf16, D = 128)
    spec = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
    for bm, bn, st, measured in ((64, 128, 3, 311808), (64, 128, 4, 410368), (128, 128, 3, 328704)):
        est = shared_memory_estimate(
            "flash_mhf_fwd", spec, Fwd(block_m=bm, block_n=bn, num_stages=st)
        )
        assert abs(est - measured) <= 1024, (bm, bn, st, est, measured)
    # dK/dU/dV with transpose_acc, fp32, D = 96 (the 128M spec), one stage: 270336 reported
    spec = KernelSpec(8, 8, 96, 8, 256, "float32", "sm90")
    config = Dkv(block_m=128, block_n=64, num_stages=1, transpose_acc=True)
    assert abs(shared_memory_estimate("flash_mhf_bwd_dkv", spec, config) - 270336) <= 1024
    # dQ in fp32 (IEEE dots), 1.3B spec, 128/64, one stage: 262144 reported
    spec = KernelSpec(16, 16, 128, 22, 256, "float32", "sm90")
    config = Dq(block_m=128, block_n=64, num_stages=1)
    assert shared_memory_estimate("flash_mhf_bwd_dq", spec, config) >= 262144


def test_decode_splits_the_intermediate_dimension():
    spec = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
    few = default_config("flash_mhf_fwd", spec, 1, 132)
    many = default_config("flash_mhf_fwd", spec, 16384, 132)
    assert few.inter_splits > 1 and few.block_m == 16
    assert many.inter_splits == 1


def test_decode_fp8_takes_one_row_block_and_leaves_pdl_to_the_tuner():
    dense, fp8 = (
        KernelSpec(16, 16, 128, 22, 256, d, "sm90") for d in ("bfloat16", "bfloat16_e4m3")
    )
    assert not default_config("flash_mhf_fwd", dense, 8, 132).pdl
    assert not default_config("flash_mhf_fwd", dense, 16384, 132).pdl
    ampere = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm80")
    assert not default_config("flash_mhf_fwd", ampere, 8, 108).pdl
    # FP8 weights: all of a kv group's rows in one block (each tile converted once)
    assert [default_config("flash_mhf_fwd", fp8, t, 132).block_m for t in (1, 32, 64)] == [
        16,
        32,
        64,
    ]
    assert default_config("flash_mhf_fwd", dense, 64, 132).block_m == 16


@pytest.mark.parametrize(
    "de,preferred,want", [(256, 64, 64), (80, 64, 32), (96, 64, 32), (48, 32, 16)]
)
def test_pick_block_n(de, preferred, want):
    assert pick_block_n(de, preferred) == want


@pytest.mark.parametrize("dtype", ["bfloat16", "bfloat16_e4m3"])
def test_split_reduction_reads_are_bounded_with_grouped_heads(dtype):
    # 1.3B with 4 kv heads: 32 tokens are 128 (token, head) rows, past the decode tiles;
    # 128-row blocks with a wave of splits would leave one program reading 2.1 MB alone
    from mhfgen.variants.flash_mhf_fwd import FP8_REDUCE_BYTES, REDUCE_BYTES, reduce_bytes

    spec = KernelSpec(16, 4, 128, 22, 256, dtype, "sm90")
    limit = FP8_REDUCE_BYTES if spec.fp8_weights else REDUCE_BYTES
    for tokens in (1, 8, 16, 32, 64):
        config = default_config("flash_mhf_fwd", spec, tokens, 132)
        rows = tokens * spec.group
        read = reduce_bytes(spec, rows, config.block_m, config.inter_splits)
        assert read <= limit or config.block_m == 16, (tokens, config)  # 16: the least
        assert config.inter_splits > 1, tokens  # still a wave of programs
        programs = cdiv(rows, config.block_m) * spec.kv_heads * config.inter_splits
        assert programs >= 132 // 2, (tokens, config)
    assert reduce_bytes(spec, 128, 128, 33) == 33 * 128 * 128 * 4


def test_decode_tiles_without_grouped_heads_keep_their_measured_configs():
    # the H100 sweep's choices at 1, 8 and 64 tokens (docs/PERFORMANCE.md, "Decode")
    spec = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
    got = [default_config("flash_mhf_fwd", spec, t, 132) for t in (1, 8, 64)]
    assert [(c.block_m, c.block_n, c.inter_splits, c.reduce_unroll) for c in got] == [
        (16, 64, 8, 8),
        (16, 64, 8, 8),
        (16, 64, 4, 8),
    ]


def test_grouped_decode_at_256_rows_takes_32_row_blocks():
    # 1.3B with 4 kv heads at 64 tokens (256 rows): on an H100 32-row blocks with 8
    # splits (128 KiB of partials) took 26.2 us, 64-row blocks with 8 (256 KiB) 30.2-33.7
    spec = KernelSpec(16, 4, 128, 22, 256, "bfloat16", "sm90")
    config = default_config("flash_mhf_fwd", spec, 64, 132)
    assert config.block_m == 32 and config.inter_splits > 1


def test_small_row_blocks_at_256_rows_need_split_weights():
    # sm90 prefers 64-row warpgroup MMAs from 256 rows on, unless the intermediate dim is
    # split over programs (decode sizes, where the call streams its weights)
    from mhfgen.variants._triton import tile_prune_reason
    from mhfgen.variants.flash_mhf_fwd import Config

    spec = KernelSpec(16, 4, 128, 22, 256, "bfloat16", "sm90")
    assert "warpgroup" in tile_prune_reason(spec, Config(block_m=32, num_warps=4), 256)
    assert tile_prune_reason(spec, Config(block_m=32, num_warps=4, inter_splits=8), 256) is None
    assert tile_prune_reason(spec, Config(block_m=32, num_warps=4), 128) is None


def test_the_bounded_reduction_keeps_to_the_tile_rules():
    # 4 query heads over one kv head at 64 tokens: 256 rows, where sm90 wants
    # 64-row blocks at least; every heuristic config passes the tuner's tile rules
    from mhfgen.registry import get

    variant = get("flash_mhf_fwd")
    for heads, kv_heads, tokens in ((4, 1, 64), (64, 4, 64), (16, 4, 32), (16, 4, 64), (32, 8, 64)):
        for dtype in ("bfloat16", "bfloat16_e4m3"):
            spec = KernelSpec(heads, kv_heads, 128, 22, 256, dtype, "sm90")
            config = default_config("flash_mhf_fwd", spec, tokens, 132)
            assert variant.prune_reason(spec, config, tokens, 132) is None, (spec, config)
