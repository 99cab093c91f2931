"""Wan 2.1 / 2.2 (diffusers' WanTransformer3DModel): video self-attention, no text tokens.

The self-attention of every block (``blocks[i].attn1``, layer i) gets the processor below; the
cross-attention to the text (``attn2``) stays diffusers' dense attention. q, k and v are
computed as diffusers' WanAttnProcessor computes them (fused or separate projections, RMS norms
across heads, RoPE in the interleaved pairs layout).

Under diffusers' context parallelism (``ContextParallelConfig(ulysses_degree=N)``), Wan's plan
splits the patch tokens (and the RoPE angles) into contiguous raster shards before the first
block: each rank's processors exchange the heads (``ModelControl.attend``) and run spaattn on
the whole video of their H / N heads, with the grid read off the whole input.
"""

from __future__ import annotations

from typing import Any

import torch

from ._control import LayerProcessor, ModelControl, project_qkv


class WanProcessor(LayerProcessor):
    """spaattn's self-attention for one block of a Wan transformer."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                "spaattn's Wan processor serves self-attention only (no encoder_hidden_states, "
                "no attention_mask)"
            )
        q, k, v = project_qkv(attn, hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))
        if rotary_emb is not None:
            q, k = _rope(q, *rotary_emb), _rope(k, *rotary_emb)
        out = self.control.attend(self.layer, q, k, v)
        out = out.flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the pairs (x[2i], x[2i+1]) of the head dim by Wan's per-token angles."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2).type_as(x)


class WanAdapter:
    name = "Wan"
    context_parallel = True

    def forward_info(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        _, _, frames, height, width = inputs["hidden_states"].shape  # [b, c, F, H, W]
        p_t, p_h, p_w = model.config.patch_size
        return {"grid": (frames // p_t, height // p_h, width // p_w)}

    def layers(self, model: Any) -> list[Any]:
        return [block.attn1 for block in model.blocks]

    def processor(self, control: ModelControl, layer: int) -> WanProcessor:
        return WanProcessor(control, layer)
