"""Flux.1 (diffusers' FluxTransformer2DModel): joint text + image attention, no grid.

Every double-stream block (``transformer_blocks[i].attn``) and single-stream block
(``single_transformer_blocks[j].attn``) gets the processor below; layers are numbered in that
order (Flux.1 dev: 19 double-stream layers, then 38 single-stream ones). q, k and v are computed
as diffusers' FluxAttnProcessor computes them (fused or separate projections, RMS norms per head,
RoPE over the whole joint sequence); the text tokens come first (``text_placement="prefix"``) and
are all valid, as in the stock processor, which attends to the padded prompt without a mask. A
double-stream block receives the image and text tokens apart and concatenates them; a
single-stream block receives the concatenated sequence, whose text length is the forward's
``encoder_hidden_states.shape[1]``.

Flux runs without a grid: the (h, w) of the packed latent tokens is not known from the shapes of
the forward's inputs (only from the values of ``img_ids``), so the image tokens are taken in the
raster order of the packed latent sequence, without the grid's neighbour map
(``first_frame_blocks="frame"`` means none). IP-Adapter processors and attention masks are not
supported.

Under diffusers' context parallelism (``ContextParallelConfig(ulysses_degree=N)``), Flux's plan
splits the text and the image tokens separately, so each rank's joint sequence is its text
shard followed by its image shard; after the heads are exchanged the whole sequence is put in
order, all text then all image tokens, for spaattn (and back for the output).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from diffusers.models.embeddings import apply_rotary_emb

from ._control import LayerProcessor, ModelControl, project_qkv


class FluxProcessor(LayerProcessor):
    """spaattn's attention for one layer of a Flux transformer."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        ip_hidden_states: Any = None,
        ip_adapter_masks: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise ValueError("spaattn's Flux processor takes no attention_mask")
        if ip_hidden_states is not None or ip_adapter_masks is not None:
            raise ValueError("spaattn's Flux processor does not support IP-Adapter inputs")
        double = encoder_hidden_states is not None
        if double and attn.added_kv_proj_dim is None:
            raise ValueError(
                "spaattn's Flux processor: encoder_hidden_states given to an attention module "
                "without text projections (single-stream blocks receive the joint sequence)"
            )
        q, k, v = (x.unflatten(-1, (-1, attn.head_dim)) for x in project_qkv(attn, hidden_states))
        q, k = attn.norm_q(q), attn.norm_k(k)
        shards = self.control.shards  # N under diffusers' context parallelism, else 1
        if double:
            num_text = encoder_hidden_states.shape[1]  # this rank's text tokens
            eq, ek, ev = (x.unflatten(-1, (-1, attn.head_dim))
                          for x in _project_text(attn, encoder_hidden_states))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        else:
            num_text = (self.control.info or {}).get("num_text", 0) // shards
        if image_rotary_emb is not None:
            # diffusers annotates apply_rotary_emb as returning a pair; it returns the tensor.
            q = cast(torch.Tensor, apply_rotary_emb(q, image_rotary_emb, sequence_dim=1))
            k = cast(torch.Tensor, apply_rotary_emb(k, image_rotary_emb, sequence_dim=1))

        # num_text of the whole sequence; each rank's shard is [its text shard, its image shard].
        out = self.control.attend(self.layer, q, k, v, num_text=num_text * shards,
                                  text_placement="prefix", text_shards=shards > 1)
        out = out.flatten(2, 3).to(q.dtype)
        if not double:
            return out  # pre-only attention: the block projects it together with its MLP
        text_out, out = out.split([num_text, out.shape[1] - num_text], dim=1)
        return attn.to_out[1](attn.to_out[0](out)), attn.to_add_out(text_out)


def _project_text(attn: Any, text: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v of the text tokens through the fused or separate added projections."""
    if getattr(attn, "fused_projections", False) and hasattr(attn, "to_added_qkv"):
        return tuple(attn.to_added_qkv(text).chunk(3, dim=-1))
    return attn.add_q_proj(text), attn.add_k_proj(text), attn.add_v_proj(text)


class FluxAdapter:
    name = "Flux"
    context_parallel = True

    def forward_info(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        text = inputs.get("encoder_hidden_states")  # [b, text tokens, joint_attention_dim]
        image = inputs["hidden_states"]  # [b, image tokens, in_channels]
        num_text = 0 if text is None else text.shape[1]
        return {"grid": None, "num_text": num_text, "seq": num_text + image.shape[1]}

    def layers(self, model: Any) -> list[Any]:
        """The attention modules of the blocks; a model with IP-Adapter processors is refused
        here, before apply changes anything."""
        blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
        modules = [block.attn for block in blocks]
        for module in modules:
            # spaattn's processor would drop the image prompt's attention.
            if "IPAdapter" in type(module.processor).__name__:
                raise ValueError(
                    "pipe: spaattn does not support Flux with an IP-Adapter loaded "
                    f"({type(module.processor).__name__}); unload it first"
                )
        return modules

    def processor(self, control: ModelControl, layer: int) -> FluxProcessor:
        return FluxProcessor(control, layer)
