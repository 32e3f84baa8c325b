"""Snakemake job: load one cached model as every model job does (Hub offline, on the job's device), run it once.

On a cluster this is the first job of each model on a compute node: a cache the node cannot see or load,
or a GPU it cannot use, fails here in seconds instead of hours into path patching. The record says which
device the job ran on, so `device: auto` can be checked: CUDA where the job has a GPU, the CPU otherwise.
"""

import os
from pathlib import Path

import torch

from circuit_reuse.io import versions, write_json
from circuit_reuse.models import WEIGHT_SUFFIXES, load_model, resolve_device, verify_cache
from circuit_reuse.workflow import model_job

PROMPT = "When Mary and John went to the store, John gave a drink to"

with model_job(snakemake) as clock:  # noqa: F821 (snakemake injects this object)
    model_dir = Path(snakemake.input.manifest).parent  # noqa: F821
    manifest = verify_cache(model_dir)
    device = resolve_device(snakemake.params.device)  # noqa: F821
    with clock.phase("model load"):
        model = load_model(model_dir, device=str(device))
    tokens = model.tokenizer(PROMPT, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:]).item()
    top = logits[0, -1].topk(5).indices.tolist()
    record = {
        "model": snakemake.wildcards.model,  # noqa: F821
        "device": device.type,
        "hub_offline": os.environ.get("HF_HUB_OFFLINE") == "1",
        "shape": {"n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads, "d_model": model.cfg.d_model},
        "weights_sha256": {
            name: entry["sha256"] for name, entry in manifest["files"].items() if name.endswith(WEIGHT_SUFFIXES)
        },
        "prompt": PROMPT,
        "prompt_loss": round(loss, 4),
        "top_next_tokens": [model.tokenizer.decode([t]) for t in top],
        "versions": versions(),
    }
    write_json(snakemake.output.check, record)  # noqa: F821
    print(f"checked {record['model']} on {device}: loss {record['prompt_loss']}, next {record['top_next_tokens']}")
