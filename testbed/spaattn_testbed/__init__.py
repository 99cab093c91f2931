"""A small video DiT trained on procedural videos: learned attention to measure sparse attention on.

Modules: ``captions`` (grammar, tokenizer), ``data`` (procedural scenes and rendering), ``model``
(the DiT), ``attention`` (the replaceable attention function and q/k/v capture), ``train``
(resumable rectified-flow training), ``sample`` (Euler sampler, strips and GIFs), ``checkpoint``.
"""
