"""``polyray export``: one phase's adapter of a run, as files other tools load without polyray.

Two forms:

- the adapter (default): the phase's peft adapter directory with the base model's tokenizer and
  chat template beside it, so ``AutoTokenizer.from_pretrained(out)`` and
  ``PeftModel.from_pretrained(base, out)`` work; ``adapter_config.json`` names the base model
  (its hub id, else its local directory) for ``AutoPeftModelForCausalLM``;
- merged (``merge=True``): the base with the adapter folded into its weights (peft's
  ``merge_and_unload``), saved in standard Hugging Face format (safetensors, ``config.json``,
  ``generation_config.json``, tokenizer and chat template), which ``AutoModelForCausalLM`` and
  vLLM load like any other model. The weights keep the base model's dtype.

The chat template is the base tokenizer's own; the embedded model has none, so it gets the
minimal template the generation service serves it with (:data:`~polyray.models.tiny.EMBEDDED_CHAT_TEMPLATE`).
The export is written to a staging directory next to ``out`` and renamed into place, so a
merge killed half-way leaves no half-written model. ``polyray_export.json`` records where it
came from (run, phase, policy version, base model).

:func:`push_to_hub` uploads an export with ``huggingface_hub``; every failure (no network, no
token, no access) is one :class:`ExportError` line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from polyray.io import ConfigError
from polyray.models.run_dir import phase_adapter, run_base_model

EXPORT_INFO = "polyray_export.json"
MERGE_STEPS = ("load base model", "load adapter", "merge", "save")


class ExportError(ConfigError):
    """A run that cannot be exported as asked, or an upload that failed; one line naming the path or repo."""


def default_out(run_dir: Path, phase: str, merge: bool) -> Path:
    """``<run>/export/<phase>`` (the adapter) or ``<run>/export/<phase>-merged``."""
    return Path(run_dir) / "export" / (f"{phase}-merged" if merge else phase)


def _hub_id(run_dir: Path) -> str | None:
    """The run's ``model.source`` when it is a hub id (what ``adapter_config.json`` should name)."""
    try:
        source = (yaml.safe_load((run_dir / "config.resolved.yaml").read_text()) or {}).get("model", {}).get("source")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if isinstance(source, str) and source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return None if Path(source).expanduser().exists() else source
    return None


def _tokenizer(base_dir: Path):
    """The base model's tokenizer, with the embedded model's chat template when it has none of its own."""
    from transformers import AutoTokenizer

    from polyray.models.tiny import EMBEDDED_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if not getattr(tokenizer, "chat_template", None) and (base_dir / "build_info.json").is_file():
        tokenizer.chat_template = EMBEDDED_CHAT_TEMPLATE
    return tokenizer


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    phase: str | None = None,
    merge: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """Export ``phase`` (default: the run's last) of the run in ``run_dir`` to ``out`` (default
    :func:`default_out`); returns ``out``. ``on_step(name)`` is called as each of
    :data:`MERGE_STEPS` starts (merged exports), for a progress bar.

    Raises :class:`ExportError` naming the path for a missing run directory, phase, adapter or base
    model, or an ``out`` that already holds files."""
    run_dir = Path(run_dir).expanduser()
    try:
        phase, adapter = phase_adapter(run_dir, phase)
        base_dir = run_base_model(run_dir, adapter)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    out = Path(out).expanduser() if out is not None else default_out(run_dir, phase, merge)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out: {out} already exists; remove it or choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if merge:
            _write_merged(base_dir, adapter, staging, on_step or (lambda step: None))
        else:
            _write_adapter(base_dir, adapter, staging, _hub_id(run_dir))
        info = {
            "run": str(run_dir.resolve()),
            "phase": phase,
            "merged": merge,
            "base_model": str(base_dir),
            "adapter": str(adapter),
            "policy_version": _policy_version(adapter),
        }
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2))
        staging.chmod(0o755)
        # readable by whoever serves it (some writers leave 0600)
        for f in staging.iterdir():
            f.chmod(0o644)
        if out.exists():
            # empty (checked above)
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _policy_version(adapter: Path) -> int | None:
    try:
        return json.loads((adapter / "polyray_version.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_adapter(base_dir: Path, adapter: Path, out: Path, hub_id: str | None) -> None:
    """The adapter's files, its config naming the base model, the tokenizer and chat template."""
    for f in adapter.iterdir():
        if f.is_file() and f.name != "polyray_version.json":
            shutil.copy2(f, out / f.name)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = hub_id or str(base_dir)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    _tokenizer(base_dir).save_pretrained(str(out))


def _write_merged(base_dir: Path, adapter: Path, out: Path, on_step: Callable[[str], None]) -> None:
    """The base with the adapter merged in, in the base's dtype, plus tokenizer and generation config."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    on_step(MERGE_STEPS[0])
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    on_step(MERGE_STEPS[1])
    model = PeftModel.from_pretrained(base, str(adapter))
    on_step(MERGE_STEPS[2])
    merged = model.merge_and_unload()
    on_step(MERGE_STEPS[3])
    # not the base's path: this is another model
    merged.config.name_or_path = ""
    merged.save_pretrained(str(out), safe_serialization=True)
    _tokenizer(base_dir).save_pretrained(str(out))


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload ``folder`` to the hub model repository ``repo_id`` (created if needed); its URL.

    Raises :class:`ExportError` with one line (the repo and the reason) when the hub cannot be
    reached, the token is missing or lacks access."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="polyray export"
        )
    # offline, no token, no access, bad repo id: each one line, never a traceback
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise ExportError(f"--push-to-hub: cannot upload {folder} to {repo_id!r} ({reason[:300]})") from None
    return str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}")
