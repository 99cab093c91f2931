"""CogVideoX (diffusers' CogVideoXTransformer3DModel): joint text + video attention.

The attention of every block (``transformer_blocks[i].attn1``, layer i) gets the processor
below. q, k and v are computed as diffusers' CogVideoXAttnProcessor2_0 computes them (fused or
separate projections, QK layer norms, RoPE on the video tokens); the text tokens come first
(``text_placement="prefix"``) and are all valid, as in the stock processor, which attends to the
padded prompt without a mask. Batched guidance (cond and uncond in one batch) is one entry.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb

from ._control import LayerProcessor, ModelControl, project_qkv


class CogVideoXProcessor(LayerProcessor):
    """spaattn's attention for one block of a CogVideoX transformer."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise ValueError("spaattn's CogVideoX processor takes no attention_mask")
        num_text = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch, seq, _ = hidden_states.shape
        q, k, v = project_qkv(attn, hidden_states)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            q[:, :, num_text:] = apply_rotary_emb(q[:, :, num_text:], image_rotary_emb)
            if not attn.is_cross_attention:
                k[:, :, num_text:] = apply_rotary_emb(k[:, :, num_text:], image_rotary_emb)

        # q, k, v are [b, H, S, d]; spaattn reads them as [b, S, H, d] views and writes a
        # contiguous [b, S, H, d] output, so that merging the heads below is free.
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        out = self.control.attend(self.layer, q, k, v, num_text=num_text, text_placement="prefix")
        out = attn.to_out[1](attn.to_out[0](out.reshape(batch, seq, attn.heads * head_dim)))
        text_out, out = out.split([num_text, seq - num_text], dim=1)
        return out, text_out


class CogVideoXAdapter:
    name = "CogVideoX"
    context_parallel = False  # no diffusers context parallel plan for this model

    def forward_info(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        _, frames, _, height, width = inputs["hidden_states"].shape  # [b, F, c, H, W]
        p, p_t = model.config.patch_size, model.config.patch_size_t
        return {"grid": (frames // (p_t or 1), height // p, width // p)}

    def layers(self, model: Any) -> list[Any]:
        return [block.attn1 for block in model.transformer_blocks]

    def processor(self, control: ModelControl, layer: int) -> CogVideoXProcessor:
        return CogVideoXProcessor(control, layer)
