"""The model pair of a scan: loaded once, on first need, and described for the report.

An adapter scan loads the base once with its adapters; the base side is the same object
with the adapters switched off (never a second copy). Every input file is checked before
any work (:func:`validate_inputs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wbsafe.config import ScanConfig
from wbsafe.io.serialize import to_jsonable

if TYPE_CHECKING:
    from wbsafe.io.adapter_switch import AdapterSwitcher


class Models:
    """Loads the models once, on first need; base comes from the same object for adapters."""

    def __init__(self, config: ScanConfig, switcher: AdapterSwitcher | None = None) -> None:
        """``switcher``: where an adapter scan's model comes from when given (one base kept
        loaded across scans, its adapters swapped in)."""
        self.config = config
        self.switcher = switcher
        self._tuned: Any = None
        self._base: Any = None

    @property
    def adapters(self) -> list[str]:
        from wbsafe.io.models import is_adapter_dir

        adapters = list(self.config.adapters)
        if self.config.tuned and is_adapter_dir(self.config.tuned):
            adapters.insert(0, self.config.tuned)
        return adapters

    def tuned(self) -> Any:
        from wbsafe.io.models import load_model

        if self._tuned is None:
            if self.adapters and self.switcher is not None:
                self._tuned = self.switcher.load(self.config.base, self.adapters)
            elif self.adapters:
                self._tuned = load_model(self.config.base, self.adapters, self.config.runtime)
            else:
                assert self.config.tuned
                self._tuned = load_model(self.config.tuned, runtime=self.config.runtime)
        return self._tuned

    def batches(self) -> Any:
        """Rows per batch for this scan's passes (:mod:`wbsafe.capture.batching`), sized from
        the tuned model's input device now; on the CPU generation keeps ``runtime.batch_size``."""
        import dataclasses

        from wbsafe.capture.batching import batches_for

        rt = self.config.runtime
        got = batches_for(self.tuned(), new_tokens=self.config.max_new_tokens, cap=rt.max_batch)
        if got.free_bytes is None:
            gen = rt.batch_size if rt.max_batch is None else min(rt.batch_size, rt.max_batch)
            got = dataclasses.replace(got, generation=gen)
        return got

    def base(self) -> Any:
        """The separately loaded base, or None when the tuned model is base + adapters."""
        from wbsafe.io.models import load_model

        if self.adapters:
            return None
        if self._base is None:
            self._base = load_model(self.config.base, runtime=self.config.runtime)
        return self._base


def validate_inputs(config: ScanConfig) -> None:
    """Check every file before any work: headers, shards, config shapes, adapter fit.

    A bad file is an error naming it, raised before a stage runs, so nothing is lost.
    """
    from pathlib import Path

    from wbsafe.io.containment import resolve_strict
    from wbsafe.io.models import check_adapter_fits, check_weights_match_config, is_adapter_dir

    for given in [config.base, config.tuned, *config.adapters]:
        if given and (Path(given).is_symlink() or Path(given).exists()):
            resolve_strict(Path(given), "the model path")  # a loop is said as one
    headers = check_weights_match_config(config.base)
    for path in ([config.tuned] if config.tuned else []) + list(config.adapters):
        if is_adapter_dir(path):
            check_adapter_fits(headers, path, config.base)
        else:
            check_weights_match_config(path)


def weight_hashes(config: ScanConfig) -> dict[str, str]:
    """sha256 of every weight file the scan reads (base, tuned or adapters)."""
    from wbsafe.io.models import is_adapter_dir, weight_file_hashes

    hashes = weight_file_hashes(config.base)
    for a in ([config.tuned] if config.tuned else []) + list(config.adapters):
        hashes.update(weight_file_hashes(a, "adapter_model" if is_adapter_dir(a) else "model"))
    return hashes


def named_base_notes(config: ScanConfig) -> list[str]:
    """One line per adapter whose ``base_model_name_or_path`` is not the base the user gave:
    the scan used the given base (a named base is never followed), and the report says so,
    since an adapter trained on another base screened against this one may read as damage."""
    from pathlib import Path

    from wbsafe.io.models import is_adapter_dir, read_adapter_config

    given = Path(config.base).resolve()
    notes = []
    for adapter in ([config.tuned] if config.tuned else []) + list(config.adapters):
        if not is_adapter_dir(adapter):
            continue
        named = str(read_adapter_config(adapter).get("base_model_name_or_path") or "")
        where = Path(adapter) / named if named and (Path(adapter) / named).is_dir() else None
        where = where or (Path(named) if named and Path(named).is_dir() else None)
        if where is not None and where.resolve() == given:
            continue
        notes.append(
            f"adapter {adapter} names its base as {named or '(nothing)'!r} in "
            f"adapter_config.json, not the base given ({config.base}): it was screened against "
            "the base given"
        )
    return notes


def describe_source(config: ScanConfig, models: Models) -> dict[str, Any]:
    """What was scanned, as recorded in the report (device/dtype when a model was loaded)."""
    runtime = to_jsonable(config.runtime)
    tuned = models._tuned.describe() if models._tuned is not None else None
    base = models._base.describe() if models._base is not None else None
    if base is None and tuned is not None and models.adapters:
        # the base is the tuned model with its adapters switched off: same device and dtype
        base = {**tuned, "adapters": [], "adapters_disabled": True,
                "weight_sha256": models._tuned.base_weight_hashes()}  # fmt: skip
    return {
        "base": base or {"path": config.base, "adapters": [], "runtime": runtime},
        "tuned": {**(tuned or {"path": config.tuned or config.base, "adapters": models.adapters,
                               "runtime": runtime}), "base_notes": named_base_notes(config)},
    }  # fmt: skip
