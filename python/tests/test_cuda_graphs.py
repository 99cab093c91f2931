"""A transformer forward with spaattn's processors captured in a CUDA graph: the replay equals
the eager forward, on the captured inputs and on new inputs copied into them (GPU only)."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import spaattn.diffusers as sd  # noqa: E402
from test_diffusers import CASES  # noqa: E402


def _forward(model, inputs):
    return model(**inputs, return_dict=False)[0]


@pytest.mark.parametrize("method", ["rectified", "sparse"])
def test_cuda_graph_replay_of_a_wan_forward_equals_eager(gpu_pipeline, method):
    spec = CASES["wan"]
    torch.manual_seed(0)
    model = copy.deepcopy(spec.build()).eval().to("cuda", torch.bfloat16)
    first = spec.inputs(1, 900.0, "cuda", torch.bfloat16)
    second = spec.inputs(2, 900.0, "cuda", torch.bfloat16)
    second = {k: x[:1] if isinstance(x, torch.Tensor) and x.dim() > 0 else x
              for k, x in second.items()}  # other values, the same shapes
    handle = sd.apply(model, method=method, sparsity=0.9, block_size=64, steps="manual")
    try:
        with torch.no_grad():
            eager_first = _forward(model, first).clone()
            eager_second = _forward(model, second).clone()
            static = {k: x.clone() if isinstance(x, torch.Tensor) else x for k, x in first.items()}
            # Warm-up on a side stream, as torch asks before a capture: every workspace and
            # state spaattn needs is allocated by now.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                _forward(model, static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = _forward(model, static)
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(captured, eager_first, atol=0, rtol=0)
            for key, x in second.items():
                if isinstance(x, torch.Tensor):
                    static[key].copy_(x)
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(captured, eager_second, atol=0, rtol=0)
        assert all(s.kind == "sparse" and not s.mask_reused for s in handle.stats().values())
    finally:
        handle.remove()
