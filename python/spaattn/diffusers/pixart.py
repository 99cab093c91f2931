"""PixArt-α / PixArt-Σ (diffusers' PixArtTransformer2DModel): image self-attention, no text.

The self-attention of every block (``transformer_blocks[i].attn1``, layer i) gets the processor
below; the cross-attention to the text (``attn2``) stays diffusers' dense attention. q, k and v
are computed as diffusers' AttnProcessor2_0 computes them for PixArt's self-attention (fused or
separate projections on a [b, S, C] input; QK norms, the residual connection and the output
rescaling where a module has them). The image tokens are the patches in raster order, the grid
(1, H / p, W / p) of the latent input [b, c, H, W] and the patch size p. Not supported (a
ValueError): an attention mask on the self-attention, spatial or group norms, 4-D inputs.
"""

from __future__ import annotations

from typing import Any

import torch

from ._control import LayerProcessor, ModelControl, project_qkv


class PixArtProcessor(LayerProcessor):
    """spaattn's self-attention for one block of a PixArt transformer."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                "spaattn's PixArt processor serves self-attention only (no encoder_hidden_states, "
                "no attention_mask)"
            )
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("spaattn's PixArt processor supports no spatial_norm or group_norm")
        if hidden_states.dim() != 3:
            raise ValueError(
                "spaattn's PixArt processor expects hidden_states [b, S, C], got "
                f"{tuple(hidden_states.shape)}"
            )
        residual = hidden_states
        q, k, v = project_qkv(attn, hidden_states)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = self.control.attend(self.layer, q, k, v)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3).to(q.dtype)))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class PixArtAdapter:
    name = "PixArt"
    context_parallel = False  # no diffusers context parallel plan for this model

    def forward_info(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        _, _, height, width = inputs["hidden_states"].shape  # [b, c, H, W]
        p = model.config.patch_size
        return {"grid": (1, height // p, width // p)}

    def layers(self, model: Any) -> list[Any]:
        return [block.attn1 for block in model.transformer_blocks]

    def processor(self, control: ModelControl, layer: int) -> PixArtProcessor:
        return PixArtProcessor(control, layer)
