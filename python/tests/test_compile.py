"""spaattn's processors under torch.compile on the tiny transformers of test_diffusers (CPU
float32): one graph without breaks that gives the stock output at density 1, no recompilation
when the step moves on; spaattn's refusal of gradients; meta tensors through the operators."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import spaattn  # noqa: E402
import spaattn.diffusers as sd  # noqa: E402
from test_diffusers import CASES, GRID, run  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_fullgraph_matches_the_stock_model_and_does_not_recompile(name, fresh_dynamo):
    spec = CASES[name]
    torch.manual_seed(0)
    model = spec.build().eval()
    inputs = spec.inputs(2, 900.0, "cpu", torch.float32)
    stock = run(model, inputs)
    handle = sd.apply(model, method="rectified", sparsity=0.0, block_size=64, steps="manual")
    try:
        # Inductor itself, counting the frames it compiles.
        backend = CompileCounterWithBackend("inductor")
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        tolerance = 2e-5 * stock.abs().max().item()
        with torch.no_grad():
            out = compiled(**inputs, return_dict=False)[0]
            torch.testing.assert_close(out, stock, atol=tolerance, rtol=0)
            assert handle.step == 0
            handle.next_step()
            out = compiled(**inputs, return_dict=False)[0]
            torch.testing.assert_close(out, stock, atol=tolerance, rtol=0)
        assert backend.frame_count == 1  # the second step reused the graph
        assert handle.step == 1  # ... whose operator read the moved clock when it ran
        assert not counters["graph_break"]
        assert all(s.density == 1.0 for s in handle.stats().values())
    finally:
        handle.remove()


def test_inputs_that_require_grad_are_refused_through_a_processor():
    spec = CASES["wan"]
    torch.manual_seed(0)
    model = spec.build().eval()
    inputs = spec.inputs(1, 900.0, "cpu", torch.float32)
    inputs["hidden_states"].requires_grad_(True)
    with sd.apply(model, sparsity=0.0, block_size=64, steps="manual"), torch.enable_grad():
        with pytest.raises(ValueError, match="q: expected a tensor that does not require grad"):
            model(**inputs, return_dict=False)


def _error(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


def test_sparse_attention_on_meta_tensors():
    attention = spaattn.SparseAttention("rectified", block_size=64, grid=(2, 8, 8))
    for layout, shape in (("bshd", (2, 136, 2, 64)), ("bhsd", (2, 2, 136, 64))):
        q = torch.empty(shape, device="meta")
        out = attention.forward(q, q, q, num_text=8, layout=layout)
        assert out.device.type == "meta" and out.shape == q.shape and out.dtype == q.dtype
    assert attention.state_count == 0  # checked, not run

    def call(device: str):
        q = torch.zeros(2, 136, 2, 96, device=device)
        return lambda: attention.forward(q, q, q, num_text=8)

    message = _error(call("meta"))
    assert "expected head_dim 64 or 128, got 96" in message
    assert message == _error(call("cpu"))


def test_model_attention_on_meta_tensors():
    spec = CASES["wan"]
    torch.manual_seed(0)
    model = spec.build().eval()
    with sd.apply(model, sparsity=0.9, block_size=64, steps="manual") as handle:
        control = model._spaattn_control
        seq = GRID[0] * GRID[1] * GRID[2]

        def call(device: str, head_dim: int = 64):
            q = torch.zeros(1, seq, 2, head_dim, device=device)
            return torch.ops.spaattn.model_attention(q, q, q, None, control.handle, 0,
                                                     list(GRID), 0, "suffix")

        out = call("meta")
        assert out.device.type == "meta" and out.shape == (1, seq, 2, 64)
        assert not handle.stats()  # checked, not run
        message = _error(lambda: call("meta", 96))
        assert "expected head_dim 64 or 128, got 96" in message
        assert message == _error(lambda: call("cpu", 96))


def test_block_sparse_attention_compiles_without_a_graph_break_and_on_meta_tensors():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 300, 64, generator=g) for _ in range(3))  # [b, H, S, d]
    mask = torch.rand(1, 2, 5, 5, generator=g) < 0.6  # 5 blocks of 64 (the last partial)
    mask[..., 0] = True
    csr = tuple(torch.from_numpy(x) for x in spaattn.dense_to_csr(mask.numpy()))

    def f(q, k, v, mask):
        out, lse = spaattn.block_sparse_attention(q, k, v, mask, block_size=64, layout="bhsd",
                                                  return_lse=True)
        return out * 2, lse

    for m in (mask, csr):
        counter = CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(f, fullgraph=True, backend=counter)
        for got, want in zip(compiled(q, k, v, m), f(q, k, v, m), strict=True):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert counter.frame_count == 1

    out, lse = f(q.to("meta"), k.to("meta"), v.to("meta"), mask.to("meta"))
    assert out.device.type == "meta" and out.shape == (1, 2, 300, 64)
    assert lse.shape == (1, 2, 300) and lse.dtype == torch.float32

    def wrong(device: str):
        x = torch.zeros(1, 2, 300, 96, device=device)
        return lambda: spaattn.block_sparse_attention(x, x, x, mask.to(device), block_size=64,
                                                      layout="bhsd")

    message = _error(wrong("meta"))
    assert "expected head_dim 64 or 128, got 96" in message
    # The precision setting is checked on meta tensors as on real ones (meta counts as host).
    fp8 = lambda device: lambda: spaattn.block_sparse_attention(  # noqa: E731
        q.to(device), k.to(device), v.to(device), mask.to(device), layout="bhsd", block_size=64,
        precision="fp8")
    assert _error(fp8("meta")) == _error(fp8("cpu")) == (
        "precision: fp8 needs CUDA tensors (the Hopper FP8 kernel), got cpu tensors")
    assert message == _error(wrong("cpu"))
