"""checkpoint.py -- checkpoints: the sharded training state (torch.distributed.checkpoint) plus an HF
export of each model, written atomically, checked on resume.

  ckpt_XXXXX/dcp/            both models and both AdamW states, every rank writing and reading only its
                             own shards (DCP); no rank ever holds a full optimizer state
  ckpt_XXXXX/rng/rank_R.pt   the Python and torch RNG of rank R
  ckpt_XXXXX/state.pt        iteration, config, world size, document stream, history (rank 0)
  ckpt_XXXXX/<role>/         HF-loadable export (safetensors + config + tokenizer), streamed tensor by
                             tensor: rank 0 holds at most EXPORT_SHARD_BYTES of it at a time
  ckpt_XXXXX/manifest.json   sizes of every file + sha256 of state.pt, written last
Everything is written into .tmp_ckpt_XXXXX, which rank 0 renames into place after all ranks are done; a
crash while writing leaves the previous checkpoint as it was. A checkpoint whose manifest is missing or
does not match is skipped with one line (the newest intact one is used); --resume=PATH to one is refused.

Run: imported by train.py. Tests: tests/test_loop.py (bitwise resume), tests/test_robust.py (kill -9, damage).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from config import Config, ConfigError
from data import DocumentStream
from dist import barrier, full, print0, rank_world

if TYPE_CHECKING:
    from infuser import Role

EXPORT_SHARD_BYTES = 2 * 2 ** 30


def _dcp_state(roles: dict, with_optim: dict) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    out = {}
    for name, r in roles.items():
        out[name] = {"model": get_model_state_dict(r.model)}
        if with_optim[name]:          # an AdamW that never stepped has no state: nothing to save or load
            out[name]["optim"] = get_optimizer_state_dict(r.model, r.optimizer)
    return out


def export_hf(role: Role, out: Path, rank: int, shard_bytes: int | None = None) -> None:
    """The role's model as an HF directory, one tensor at a time (each one a collective full_tensor()
    under FSDP2); rank 0 writes safetensors files of <= shard_bytes (one model.safetensors when it fits,
    else model-0000i-of-0000n.safetensors and the index HF reads)."""
    from safetensors.torch import save_file
    shard_bytes = EXPORT_SHARD_BYTES if shard_bytes is None else shard_bytes
    model = role.model
    tied = getattr(model.config, "tie_word_embeddings", False)
    files, buf, size = [], {}, 0

    def flush():
        nonlocal buf, size
        if buf:
            path = out / f".part{len(files):05d}.safetensors"
            save_file(buf, str(path), metadata={"format": "pt"})
            files.append((path, list(buf)))
            buf, size = {}, 0
    for key, t in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue
        whole = full(t)                   # a collective under FSDP2: every rank joins
        if rank == 0:
            buf[key] = whole.detach().to("cpu", copy=True).contiguous()
            size += buf[key].numel() * buf[key].element_size()
            if size >= shard_bytes:
                flush()
        del whole
    if rank != 0:
        return
    flush()
    if len(files) == 1:
        os.replace(files[0][0], out / "model.safetensors")
    else:
        weight_map = {}
        for i, (path, keys) in enumerate(files):
            name = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
            os.replace(path, out / name)
            weight_map.update(dict.fromkeys(keys, name))
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    role.tokenizer.save_pretrained(out)


def save_checkpoint(cfg: Config, it: int, roles: dict, stream: DocumentStream, extra: dict) -> str | None:
    """Write out_dir/ckpt_XXXXX atomically (a temporary directory renamed into place); keep the last K.
    Collective under torchrun: every rank calls it."""
    import torch.distributed.checkpoint as dcp
    rank, world = rank_world()
    out = Path(cfg.out_dir)
    final, tmp = out / f"ckpt_{it:05d}", out / f".tmp_ckpt_{it:05d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    barrier()
    with_optim = {name: len(r.optimizer.state) > 0 for name, r in roles.items()}
    with _one_process_is_fine():
        dcp.save(_dcp_state(roles, with_optim), checkpoint_id=str(tmp / "dcp"))
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, tmp / "rng" / f"rank_{rank}.pt")
    for name, role in roles.items():
        if rank == 0:
            (tmp / name).mkdir()
        export_hf(role, tmp / name, rank)
    if rank == 0:
        state = {"iteration": it, "config": asdict(cfg), "world_size": world, "optim_saved": with_optim,
                 "documents": stream.state_dict(), **extra}
        torch.save(state, tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    barrier()                           # every rank's shards are on disk before the manifest and the rename
    if rank != 0:
        return None
    write_manifest(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    ckpts = sorted(out.glob("ckpt_*"))
    for old in ckpts[:-cfg.keep_last] if cfg.keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return str(final)


MANIFEST = "manifest.json"


def write_manifest(ckpt: Path) -> None:
    """Written last into a checkpoint: every file's size, and the sha256 of state.pt."""
    files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    digest = hashlib.sha256((ckpt / "state.pt").read_bytes()).hexdigest()
    (ckpt / MANIFEST).write_text(json.dumps({"files": files, "state_sha256": digest}))


def checkpoint_problem(ckpt: Path) -> str | None:
    """None for an intact checkpoint, else why not (one phrase)."""
    try:
        man = json.loads((ckpt / MANIFEST).read_text())
        for name, size in man["files"].items():
            p = ckpt / name
            if not p.is_file():
                return f"missing {name}"
            if p.stat().st_size != size:
                return f"{name} has {p.stat().st_size} bytes, the manifest says {size}"
        if hashlib.sha256((ckpt / "state.pt").read_bytes()).hexdigest() != man["state_sha256"]:
            return "state.pt does not match its hash"
    except FileNotFoundError:
        return f"no {MANIFEST} (not completely written)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"unreadable {MANIFEST} ({type(e).__name__})"
    return None


def find_checkpoint(cfg: Config) -> Path | None:
    """The checkpoint to resume: --resume=PATH (refused if damaged), or the newest intact one in out_dir
    (damaged ones are skipped, each with one line)."""
    if cfg.resume in ("", "false", "0"):
        return None
    if cfg.resume not in ("latest", "true", "1"):
        p = Path(cfg.resume)
        if not (p / "state.pt").is_file():
            raise ConfigError(f"--resume={cfg.resume}: no checkpoint there (state.pt missing)")
        if (why := checkpoint_problem(p)) is not None:
            raise ConfigError(f"--resume={cfg.resume}: the checkpoint is damaged ({why})")
        return p
    ckpts = sorted(Path(cfg.out_dir).glob("ckpt_*"))
    if not ckpts:
        raise ConfigError(f"--resume: no checkpoint in {cfg.out_dir}")
    for p in reversed(ckpts):
        if (why := checkpoint_problem(p)) is None:
            return p
        print0(f"warning: skipping the damaged checkpoint {p} ({why})")
    raise ConfigError(f"--resume: no intact checkpoint in {cfg.out_dir} ({len(ckpts)} damaged)")


# keys that change what a run computes: resuming a checkpoint whose config differs in one is refused
RUN_KEYS = ("preset", "seed", "model", "generator_model", "dtype", "documents", "dev", "dev_limit", "question_source",
            "doc_batch_size", "n_gen", "n_solver", "temperature", "top_p", "max_prompt_tokens",
            "gen_max_new_tokens", "solver_max_new_tokens", "question_route", "solver_lr", "generator_lr", "beta1",
            "beta2", "adam_eps", "weight_decay", "grad_clip", "ppo_minibatch_groups", "ppo_epochs", "clip_low",
            "clip_high", "dual_clip", "tis_cap", "solver_normalization", "generator_normalization",
            "similarity_mode", "generator_reward", "gen_invalid_penalty", "solver_mid_eos_penalty", "fix_generator",
            "fix_solver", "dev_only", "skip_dev_rollout", "dedup_questions")


def check_resume(path: Path, cfg: Config, world: int) -> dict:
    """state.pt of a checkpoint, after refusing (one line) a different world size or run-changing key."""
    try:
        state = torch.load(path / "state.pt", weights_only=False)
    except Exception as e:
        raise ConfigError(f"--resume: {path}/state.pt does not load ({type(e).__name__})") from None
    if state.get("world_size", 1) != world:
        raise ConfigError(f"--resume: {path} was written by {state.get('world_size', 1)} ranks, this run has "
                          f"{world}; resume with the same number of ranks")
    old = state["config"]
    for key in RUN_KEYS:
        if key in old and old[key] != getattr(cfg, key) and not cfg.resume_any_config:
            raise ConfigError(f"--resume: --{key}={getattr(cfg, key)!r} differs from the checkpoint's "
                              f"{old[key]!r} (pass --resume_any_config to resume anyway)")
    return state


@contextmanager
def _one_process_is_fine():
    """DCP warns on every save and load without a process group; one process is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process")
        yield


def load_checkpoint(path: Path, roles: dict, stream: DocumentStream, state: dict) -> dict:
    """Every rank reads its own shards of both models and optimizers, and its own RNG."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    rank = rank_world()[0]
    with_optim = state.get("optim_saved", dict.fromkeys(roles, True))
    target = _dcp_state(roles, with_optim)
    try:
        with _one_process_is_fine():
            dcp.load(target, checkpoint_id=str(path / "dcp"))
        for name, role in roles.items():
            set_model_state_dict(role.model, target[name]["model"])
            if with_optim[name]:
                set_optimizer_state_dict(role.model, role.optimizer, target[name]["optim"])
        stream.load_state_dict(state["documents"])
        rng = torch.load(path / "rng" / f"rank_{rank}.pt", weights_only=False)
    except Exception as e:           # a checkpoint of another shape, or damaged past what the manifest sees
        raise ConfigError(f"--resume: {path} does not load into this run ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    st = rng["python"]
    random.setstate((st[0], tuple(st[1]), st[2]))
    torch.set_rng_state(rng["torch"])
    return state


