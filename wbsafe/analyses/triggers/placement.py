"""Where verification places a candidate: the last user message, the system turn, or an
earlier user turn, named by kind (:data:`~.search.SLOT_KINDS`).

Verification works with slot kinds as strings (they are what a Verification records); the
placing itself is :func:`~.search.place` and :func:`~.search.slot_context`, the same the
search uses, so a candidate is verified exactly where it was found. ``user``: inserted at a
word boundary of the last user turn. ``system``: inserted at a word boundary of the prompt's
system turn, or, when the prompt has none, as a new system turn holding only the candidate.
``turn``: an earlier user turn holding only the candidate, answered briefly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wbsafe.analyses.triggers.search import SLOT_KINDS, Slot, SlotContext, place, slot_context

if TYPE_CHECKING:
    from wbsafe.data.prompts import Prompt

SLOTS = SLOT_KINDS


def placed(prompt: Prompt, text: str | None, position: float, slot: str) -> list[dict[str, str]]:
    """``prompt``'s conversation with ``text`` inserted at ``position`` of ``slot`` (no
    insertion for ``text=None``); an unknown slot kind is an error."""
    return place(prompt, text, position, Slot(slot))


def context_at(loaded: Any, prompt: Prompt, position: float, slot: str) -> SlotContext:
    """The formatted prompt split where a candidate placed by :func:`placed` would go."""
    return slot_context(loaded, prompt, position, Slot(slot))
