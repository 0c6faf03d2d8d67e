"""Many adapters over one loaded base: PEFT's ``load_adapter`` / ``set_adapter`` /
``delete_adapter`` swap the adapters of the next scan in, instead of loading the base again.

The model a switch gives is the one :func:`~wbsafe.io.models.load_model` would give for the
same base and adapters (same weights, device, dtype, hashes; only PEFT's internal adapter
names differ, and nothing reads them but to ask whether there are any): the tests compare
logits and whole reports. A bad adapter file is refused before the model is touched; a swap
that fails midway drops the loaded base, so the next scan loads afresh rather than inherit a
half-swapped model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from wbsafe.config import RuntimeConfig
from wbsafe.io.models import (
    LoadedModel,
    ModelSource,
    check_adapter_fits,
    check_weights_match_config,
    load_model,
    weight_file_hashes,
)


class AdapterSwitcher:
    """Holds one loaded base; :meth:`load` returns it with the given adapters active."""

    def __init__(self, runtime: RuntimeConfig | None = None) -> None:
        self.runtime = runtime or RuntimeConfig()
        self.loaded: LoadedModel | None = None
        self.base_hashes: dict[str, str] = {}
        self.fresh_loads = 0
        self.switches = 0
        self._next = 0

    def load(self, base: str | Path, adapters: Sequence[str | Path]) -> LoadedModel:
        """``base`` with ``adapters`` stacked and active, the base loaded at most once."""
        paths = [Path(a) for a in adapters]
        if not paths:
            raise ValueError("AdapterSwitcher.load needs at least one adapter")
        if self.loaded is None or self.loaded.source.path != str(Path(base)):
            return self._fresh(base, paths)
        headers = check_weights_match_config(base)  # a bad file fails here, model untouched
        for a in paths:
            check_adapter_fits(headers, a, base)
        try:
            return self._switch(Path(base), paths)
        except BaseException:
            self.loaded = None  # half-swapped: never re-used
            raise

    def _fresh(self, base: str | Path, adapters: list[Path]) -> LoadedModel:
        self.loaded = None
        loaded = load_model(base, adapters, self.runtime)
        self.loaded, self._next, self.fresh_loads = loaded, len(adapters), self.fresh_loads + 1
        self.base_hashes = loaded.base_weight_hashes()
        return loaded

    def _switch(self, base: Path, adapters: list[Path]) -> LoadedModel:
        assert self.loaded is not None
        model, old = self.loaded.model, list(self.loaded.adapter_names)
        names = []
        for a in adapters:  # the new ones in first: PEFT never holds no adapter at all
            names.append(f"adapter{self._next}")
            self._next += 1
            model.load_adapter(str(a), adapter_name=names[-1])
        model.base_model.set_adapter(names)
        for name in old:
            model.delete_adapter(name)
        model.to(self.loaded.device)
        model.eval()
        model.requires_grad_(False)
        hashes = dict(self.base_hashes)
        for a in adapters:
            hashes.update(weight_file_hashes(a, stem="adapter_model"))
        self.loaded = dataclasses.replace(
            self.loaded, source=ModelSource(str(base), tuple(str(a) for a in adapters)),
            adapter_names=tuple(names), weight_hashes=hashes,
        )  # fmt: skip
        self.switches += 1
        return self.loaded
