"""Where a model argument points: a warmstart run, a Hugging Face checkpoint directory, or a hub name.

Decided before anything heavy is imported and before any network call, so a typo fails at once in one line:

- an existing directory is a run (its `final/`) or a HF checkpoint (its `config.json`), or an error saying which;
- something that looks like a local path (starts with `.`, `/` or `~`, has a file suffix, more than one `/`, or a
  first component that exists here, as in `runs/upstrem` when `runs/` exists) but is missing is an error;
- anything else is a hub name (`namespace/name`, checked by huggingface_hub's own rule). A name already in the
  local cache is used as is. Otherwise, with HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) it is refused here
  without a network call; online, one request without retries asks the hub, so an unknown name or an
  unreachable hub is one line, not a minute of download retries.

`runs/upstrem` before `runs/` exists is both a mistyped path and a valid hub name; nothing local can tell them
apart. So every refusal of a `namespace/name` that the hub did not confirm leads with "not found" and says there is
no such local directory; no advice about the hub's mode is given (the cache was already looked at, so switching
HF_HUB_OFFLINE would not help either way).

`what` is the argument's name in the calling command (`init.from`, `--from`, `--model`, `checkpoint`), so the
message names what the user typed.
"""

from __future__ import annotations

import os
from pathlib import Path

from warmstart.errors import UserError
from warmstart.runtime import rundir

FILE_SUFFIXES = (".json", ".yaml", ".yml", ".safetensors", ".bin", ".pt", ".pth", ".txt", ".jsonl", ".gz")


def looks_like_path(spec: str) -> bool:
    """True when `spec` can only be meant as a local path (see module doc)."""
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        return True
    if spec.lower().endswith(FILE_SUFFIXES):
        return True
    return Path(spec.split("/", 1)[0]).exists()


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, as huggingface_hub reads them (constants) or as set since."""
    from huggingface_hub import constants

    env = {os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return bool(constants.HF_HUB_OFFLINE) or bool(env & {"1", "ON", "YES", "TRUE"})


def _check_hub_name(spec: str, what: str) -> str:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        raise UserError(f"{what}: {spec} is neither a local directory nor a valid hub name (namespace/name)") from None
    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return spec
    if hub_offline():
        raise UserError(
            f"{what}: {spec}: not found (no such local directory, and no such hub model in the Hugging Face cache; "
            "offline mode, HF_HUB_OFFLINE=1: nothing is downloaded)"
        )
    _probe_hub(spec, what)
    return spec


def _probe_hub(spec: str, what: str, timeout: float = 10.0) -> None:
    """One request, no retries: a name the hub does not have, or a hub that cannot be reached, fails here in one
    line instead of in a minute of download retries. Other answers (gated, private) are left to the loader."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        model_info(spec, timeout=timeout)
    except RepositoryNotFoundError:
        raise UserError(f"{what}: {spec}: not found (no such local directory, and the Hugging Face hub has no such model)") from None
    except HfHubHTTPError:
        return
    except Exception as e:  # connection refused, DNS failure, timeout: the network's answer, not a bug
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"{what}: {spec}: not found (no such local directory; as a hub name it is not in the local cache, and "
            f"the Hugging Face hub cannot be reached: {first})"
        ) from None


def resolve_checkpoint(spec: str, what: str = "init.from") -> Path | str:
    """A warmstart run directory means its `final/`; a HF directory is itself; anything else is a hub name."""
    spec = str(spec)
    p = Path(spec).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return p
        if (rundir.final_dir(p) / "config.json").is_file():
            return rundir.final_dir(p)
        if rundir.config_path(p).is_file():
            raise UserError(f"{what}: {spec} is a warmstart run without final/ (unfinished); resume it first")
        raise UserError(f"{what}: {spec} has no config.json (not a Hugging Face checkpoint or warmstart run)")
    if p.exists():
        raise UserError(f"{what}: {spec} is a file; give a checkpoint directory, a warmstart run or a hub name")
    if looks_like_path(spec):
        raise UserError(f"{what}: {spec}: not found (no such directory)")
    return _check_hub_name(spec, what)


def load_failure(e: BaseException) -> str:
    """One line for why transformers could not load a checkpoint (the root cause's first line).

    A weights file that is a pickle holding more than tensors is refused by torch's weights-only loader with a
    paragraph of advice; it is said here in a few words, and it is never unpickled.
    """
    import pickle

    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip()
    if isinstance(e, pickle.UnpicklingError) or text.startswith("Weights only load failed"):
        return "its weights file is a pickle holding more than tensors; not unpickled (use safetensors)"
    return (text.splitlines() or [type(e).__name__])[0]
