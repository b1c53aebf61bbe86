"""The generated code of every (spec, config) of a broad grid stays what it was.

tests/render_grid.py renders the three Triton-language and the seven Gluon templates over
the grid (every structural branch, see its docstring); tests/data/render_digests.json holds one digest per (kernel, spec) of
the code its configs generate. A template refactor must leave them as they are; a change
meant to alter generated code refreshes them (`python tests/render_grid.py
--write-digests`) and re-tunes or re-checks the shipped database, whose winners are keyed
by the hash of their code.
"""

import json

import pytest
import render_grid


@pytest.fixture(scope="module")
def renders():
    return render_grid.render_grid()


def test_the_grid_takes_every_branch(renders):
    code = "\n".join(renders.values())
    for branch in (
        "for e in range(e_lo, e_hi):",
        "for n0 in range(n_lo, n_hi, BLOCK_N):",
        "for n0 in range(n_lo + BLOCK_N, n_hi, BLOCK_N):",
        "warp_specialize=True",
        "tl.make_tensor_descriptor(",
        "ticket = tl.atomic_add(",
        "        tl.store(counter, 0)",
        "        tl.atomic_xchg(counter, 0)",
        "        gl.store(COUNTERS + counter, 0)",
        "        gl.atomic_xchg(COUNTERS + counter, 0)",
        "n_ok",
        "< HEAD_DIM",
        'input_precision="ieee"',
        "def flash_mhf_bwd_dkv_dv_kernel(",
        "tl.atomic_add(DK",
        "# dk^T",
        "GROUP_HEADS: tl.constexpr = 4",
        # the Gluon templates (and their shared macros, mhfgen/variants/_gluon.jinja)
        "def flash_mhf_fwd_ws_kernel(",
        "def flash_mhf_fwd_fp8_ws_kernel(",
        "p8 = (y * gl.where(m_new > 0.0, a * (E4M3_MAX / m_new), 0.0)[:, None])",
        "p8 = (y * (a_q * r_e)[:, None]).to(gl.float8e4nv)",
        "p8 = (y * (a_q * r_e)[None, :]).to(gl.float8e4nv)",
        "p8_b = p8_smem.index(2 * C + j % 2)",
        "p8_s.store(p8)",
        "o = warpgroup_mma(gl.convert_layout(p8, a_layout)",
        "for jj in range(TILES // 2):",
        "mbarrier.arrive(w_free.index(s))",
        "dq = warpgroup_mma_wait(num_outstanding=2, deps=(dq, ))",
        "ku_smem = gl.allocate_shared_memory(gl.float8e4nv",
        "def flash_mhf_bwd_dq_ws_kernel(",
        "def flash_mhf_bwd_dkv_ws_kernel(",
        "def flash_mhf_bwd_dkvt_ws_kernel(",
        "def flash_mhf_bwd_ws_kernel(",
        "def flash_mhf_bwdt_ws_kernel(",
        "_red_add_v4(ptrs, dq, ok.to(gl.int32))",
        "_red_add_v2(ptrs, dq, ok.to(gl.int32))",
        "for tile in range(gl.program_id(0), n_tiles, gl.num_programs(0)):",
        "mbarrier.wait(turn.index(C)",
        "GROUP_HEADS = gl.constexpr(2)",
        "o_layout1",
        "p = gl.where((cols < EXPERT_DIM)[None, :], p, 0.0)",
        "def _split_scores(sg, layout: gl.constexpr):",
        "def _split_scores(sat, layout: gl.constexpr):",
        '"tanh.approx.f32 $0, $1;"',
        "gl.exp2(-1.4426950408889634 * x)",
        "def _weight(p, h, b):",
        "def _store_grad_t(",
        'gl.atomic_add(ptrs, acc_t, sem="relaxed")',
        "gl.store(ptrs, acc.to(G.dtype.element_ty))",
        "dkut1",
        "_red_add_v4(ptrs, dqt, ok)",
        "gl.atomic_add(dr_ptrs",
        "gl.store(dr_ptrs",
    ):
        assert branch in code, branch


def test_renders_match_the_committed_digests(renders):
    want = json.loads(render_grid.DIGESTS.read_text())
    got = render_grid.digests(renders)
    assert got.keys() == want.keys()
    changed = sorted(key for key in got if got[key] != want[key])
    assert not changed, (
        f"generated code changed for {len(changed)} (kernel, spec) pairs, "
        f"e.g. {changed[:3]}: see tests/render_grid.py"
    )
