"""Checkpoints: the model in bf16 safetensors, and the training state in shards of at most 15.5 MiB.

A run folder holds:

- ``model.safetensors``: the weights in bf16 with the model config in its metadata (what sampling
  and evaluation load; small enough to commit);
- ``state.json`` and ``state-<step>-<i>.safetensors``: float32 weights and AdamW moments (bf16 by
  default, to keep a 6M-parameter state near 46 MiB in files small enough to move between
  machines), written before ``state.json`` names them, so an interrupted save leaves the last
  complete state in place;
- ``loss.csv``: the loss log (written by ``train.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .model import ModelConfig, VideoDiT

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"
SHARD_BYTES = int(15.5 * 2**20)


def model_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/model.safetensors``."""
    p = Path(path)
    return p / MODEL_FILE if p.is_dir() else p


def save_model(model: VideoDiT, path: str | os.PathLike, step: int, extra: dict[str, str] | None = None) -> None:
    """Write the weights in bf16 with ``config`` and ``step`` in the metadata."""
    tensors = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(model.cfg.to_dict()), "step": str(step), "format": "spaattn-testbed-model-v1"}
    meta.update(extra or {})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def read_model_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Metadata of a model file (config JSON, step, ...)."""
    with safe_open(str(model_path(path)), framework="pt") as f:
        return dict(f.metadata() or {})


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[VideoDiT, dict[str, str]]:
    """Build the model from a model file (or run folder) and load its weights."""
    file = model_path(path)
    meta = read_model_metadata(file)
    model = VideoDiT(ModelConfig.from_dict(json.loads(meta["config"])))
    state = load_file(str(file))
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    return model.to(device=device, dtype=dtype).eval(), meta


def _pack(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Greedy split of ``tensors`` into groups of at most ``limit`` bytes (one big tensor per group)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def save_train_state(folder: str | os.PathLike, model: VideoDiT, optimizer: torch.optim.Optimizer,
                     info: dict, moment_dtype: torch.dtype = torch.bfloat16) -> None:
    """Write float32 weights, AdamW moments and ``info`` (step, counters, config) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    adam_step = 0
    for name in _param_names(model, optimizer):
        p = params[name]
        tensors[f"param.{name}"] = p.detach().to("cpu", torch.float32).contiguous()
        st = optimizer.state.get(p, {})
        if "exp_avg" in st:
            tensors[f"exp_avg.{name}"] = st["exp_avg"].detach().to("cpu", moment_dtype).contiguous()
            tensors[f"exp_avg_sq.{name}"] = st["exp_avg_sq"].detach().to("cpu", moment_dtype).contiguous()
            adam_step = int(float(st["step"]))
    step = int(info["step"])
    shard_names = []
    for i, shard in enumerate(_pack(tensors, SHARD_BYTES)):
        name = f"state-{step:07d}-{i}.safetensors"
        tmp = folder / (name + ".tmp")
        save_file(shard, str(tmp))
        os.replace(tmp, folder / name)
        shard_names.append(name)
    record = dict(info, adam_step=adam_step, shards=shard_names, config=model.cfg.to_dict(),
                  moment_dtype=str(moment_dtype).replace("torch.", ""))
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / STATE_FILE)
    for old in folder.glob("state-[0-9]*-[0-9]*.safetensors"):
        if old.name not in shard_names:
            old.unlink()


def read_train_info(folder: str | os.PathLike) -> dict | None:
    """The ``state.json`` record of a run folder, or ``None`` if it has none."""
    f = Path(folder) / STATE_FILE
    return json.loads(f.read_text()) if f.exists() else None


def load_train_state(folder: str | os.PathLike, model: VideoDiT, optimizer: torch.optim.Optimizer) -> dict:
    """Load weights and optimizer moments saved by ``save_train_state``; returns the info record."""
    folder = Path(folder)
    info = read_train_info(folder)
    if info is None:
        raise FileNotFoundError(f"no {STATE_FILE} in {folder}")
    tensors: dict[str, torch.Tensor] = {}
    for name in info["shards"]:
        tensors.update(load_file(str(folder / name)))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"])
    sd = optimizer.state_dict()
    names = _param_names(model, optimizer)
    sd["state"] = {}
    if info["adam_step"] > 0:
        for idx, name in enumerate(names):
            sd["state"][idx] = {
                "step": torch.tensor(float(info["adam_step"])),
                "exp_avg": tensors[f"exp_avg.{name}"].float(),
                "exp_avg_sq": tensors[f"exp_avg_sq.{name}"].float(),
            }
    optimizer.load_state_dict(sd)
    return info
