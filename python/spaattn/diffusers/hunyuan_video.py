"""HunyuanVideo (diffusers' HunyuanVideoTransformer3DModel): joint video + text attention.

Every dual-stream block (``transformer_blocks[i].attn``) and single-stream block
(``single_transformer_blocks[j].attn``) gets the processor below; layers are numbered in that
order. q, k and v are computed as diffusers' HunyuanVideoAttnProcessor2_0 computes them (QK
norms, RoPE on the video tokens); the sequence is the video tokens followed by the text tokens
(``text_placement="suffix"``), and the text lengths come from the key mask the transformer
builds from ``encoder_attention_mask``. Padding text queries get zero output where the stock
processor computes them; no valid token ever attends to them, so the model's output is the same.
The token refiner's attention over the text alone stays diffusers' own.

Several GPUs: diffusers has no context parallel plan for this model, so spaattn brings one
(:func:`context_parallel_plan`, given to ``enable_parallelism(config, cp_plan=...)``). It splits
the video tokens after the patch embedding and their RoPE tables over the Ulysses ranks and
gathers the output projection's output; the text stays whole on every rank (the
token refiner, the attention mask and the text stream are computed as in one process). Each
processor exchanges the video shards for the whole video of the rank's heads, takes the same
heads of the text, runs spaattn on the whole sequence, and gives back the rank's video shard of
every head and the whole text of every head (one all-gather of the text output).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from diffusers.models.embeddings import apply_rotary_emb

from ._control import LayerProcessor, ModelControl


class HunyuanVideoProcessor(LayerProcessor):
    """spaattn's attention for one layer of a HunyuanVideo transformer."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        num_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        joint = attn.add_q_proj is None and encoder_hidden_states is not None  # single-stream
        if joint:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        q, k, v = (proj(hidden_states).unflatten(2, (attn.heads, -1))
                   for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            video = q.shape[1] - (num_text if joint else 0)
            q = _rope_video(q, video, image_rotary_emb)
            k = _rope_video(k, video, image_rotary_emb)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            eq, ek, ev = (proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
                          for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            q, k, v = torch.cat([q, eq], 1), torch.cat([k, ek], 1), torch.cat([v, ev], 1)

        num_video = q.shape[1] - num_text
        lengths = (None if attention_mask is None or num_text == 0
                   else self.control.text_lengths(attention_mask, num_video))
        out = self.control.attend(self.layer, q, k, v, num_text=num_text, text_lengths=lengths,
                                  text_whole=self.control.shards > 1)
        out = out.flatten(2, 3).to(q.dtype)

        if encoder_hidden_states is None:
            return out, None
        out, text_out = out[:, :num_video], out[:, num_video:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return out, text_out


def _rope_video(x: torch.Tensor, video: int, rope: Any) -> torch.Tensor:
    """RoPE on the first `video` tokens of a [b, S, H, d] tensor, the rest unchanged."""
    # diffusers annotates apply_rotary_emb as returning a pair; it returns the rotated tensor.
    if video == x.shape[1]:
        return cast(torch.Tensor, apply_rotary_emb(x, rope, sequence_dim=1))
    rotated = cast(torch.Tensor, apply_rotary_emb(x[:, :video], rope, sequence_dim=1))
    return torch.cat([rotated, x[:, video:]], dim=1)


def context_parallel_plan() -> dict[str, Any]:
    """spaattn's context parallel plan of HunyuanVideoTransformer3DModel (module docstring): the
    patch embedding's output and the RoPE tables split along the video tokens, the output
    projection's output gathered; the text is not split."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    video = ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)
    table = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)
    return {
        "x_embedder": {0: video},
        "rope": {0: table, 1: table},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def _unplanned(model: Any) -> str | None:
    """The first module of spaattn's plan without a context parallel hook, or None."""
    for name in context_parallel_plan():
        registry = getattr(getattr(model, name, None), "_diffusers_hook", None)
        hooks = getattr(registry, "hooks", None) or {}
        if not any(key.endswith(f"---{name}") for key in hooks):
            return name
    return None


class HunyuanVideoAdapter:
    name = "HunyuanVideo"
    context_parallel = True  # with spaattn's plan (context_parallel_plan)

    def parallel_plan(self, model: Any) -> dict[str, Any]:
        return context_parallel_plan()

    def check_context_parallel(self, model: Any) -> None:
        """Refuses context parallelism not set up with spaattn's plan, and the first-frame token
        replacement (image-to-video), whose first frame lies on one rank only."""
        if getattr(model.config, "image_condition_type", None) == "token_replace":
            raise ValueError(
                "enable_parallelism: expected a HunyuanVideo transformer without "
                "image_condition_type='token_replace' (its first-frame tokens are not split), "
                "got 'token_replace'"
            )
        missing = _unplanned(model)
        if missing is not None:
            raise ValueError(
                "enable_parallelism: expected cp_plan=spaattn.diffusers."
                "context_parallel_plan(transformer) for HunyuanVideo, got a plan that does "
                f"not split or gather at '{missing}'"
            )

    def release_context_parallel(self, model: Any) -> None:
        """Before the stock processors come back: takes spaattn's plan off the model. The stock
        processors cannot run under it (diffusers' Ulysses attention would see the whole text
        once per rank and weigh it N times), so the model goes back to one-process attention
        on every rank, as before ``enable_parallelism``; it can be enabled again. (The stock
        processors' own copies of the config are cleared when they are put back: they are the
        only processors of this model that carry one.)"""
        import dataclasses

        from diffusers.hooks.context_parallel import remove_context_parallel

        parallel = getattr(model, "_parallel_config", None)
        if (getattr(parallel, "context_parallel_config", None) is None
                or _unplanned(model) is not None):
            return
        remove_context_parallel(model, context_parallel_plan())
        model._parallel_config = (
            None if getattr(parallel, "tensor_parallel_config", None) is None
            else dataclasses.replace(parallel, context_parallel_config=None))

    def forward_info(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        _, _, frames, height, width = inputs["hidden_states"].shape  # [b, c, F, H, W]
        p, p_t = model.config.patch_size, model.config.patch_size_t
        return {"grid": (frames // p_t, height // p, width // p)}

    def layers(self, model: Any) -> list[Any]:
        blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
        return [block.attn for block in blocks]

    def processor(self, control: ModelControl, layer: int) -> HunyuanVideoProcessor:
        return HunyuanVideoProcessor(control, layer)
