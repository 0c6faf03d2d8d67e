"""Helpers the trigger-hunt tests share: loading a tiny organism and its base side."""

from __future__ import annotations

from wbsafe.config import RuntimeConfig
from wbsafe.io.models import LoadedModel, load_model
from wbsafe.organisms import Organism

RT = RuntimeConfig(device="cpu")


def load(org: Organism) -> LoadedModel:
    """An organism (an adapter with its named base followed), weights not hashed."""
    return load_model(org.path, runtime=RT, hash_weights=False, follow_named_base=True)


def pair(orgs: dict[str, Organism], name: str) -> tuple[LoadedModel, LoadedModel | None]:
    """The tuned organism and its base: None for an adapter, whose base side is the tuned
    model with its adapters disabled."""
    tuned = load(orgs[name])
    return tuned, None if tuned.adapter_names else load(orgs["base"])
