"""Links that leave what the user gave: refused by default, followed only when allowed.

A model directory is the unit a security team vets: its hashes, its headers, its tokenizer.
A weight or tokenizer file inside it that is a symlink to a file elsewhere (``/etc``, another
user's checkpoint, a file that changes after the scan) would make wbsafe screen and hash
something the team never handed over; an adapter whose ``adapter_config.json`` names a base
by a path outside the adapter (``../../other``, ``/srv/models/x``) would make wbsafe load and
judge a base the team did not pick. Either is refused with an UnsafeCheckpointError naming
the file and where it points, because a silent follow is exactly the confusion an attacker
who controls the files wants, and a refused scan costs one re-run with the flag.

The explicit opt-in is the CLI's ``wbsafe --allow-outside-links ...`` (or the environment
variable ``WBSAFE_ALLOW_OUTSIDE_LINKS=1``, which the flag sets, so worker processes see it);
then such a path is followed and an :class:`OutsideLinkWarning` says what was followed.
A symlink loop, or a link to nothing, is always an error.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from wbsafe.errors import AdapterMismatchError, UnsafeCheckpointError

ALLOW_ENV = "WBSAFE_ALLOW_OUTSIDE_LINKS"
FLAG = "--allow-outside-links"


class OutsideLinkWarning(UserWarning):
    """A path outside the model directory was followed because the user allowed it."""


def outside_links_allowed() -> bool:
    """True when the user opted in (``--allow-outside-links`` / ``WBSAFE_ALLOW_OUTSIDE_LINKS``)."""
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def resolve_strict(path: Path, what: str) -> Path:
    """``path`` with every symlink resolved; a loop or a dangling link is an error naming it."""
    try:
        return path.resolve(strict=True)
    except RuntimeError as exc:  # Python 3.11-3.12 say "Symlink loop" this way
        raise UnsafeCheckpointError(f"{what} is a symlink loop", path) from exc
    except OSError as exc:  # ELOOP on newer Pythons, ENOENT for a dangling link
        cause = "a symlink loop" if exc.errno == 40 else "a link to nothing"
        raise UnsafeCheckpointError(f"{what} is {cause} ({exc.strerror})", path) from exc


def check_inside(
    path: str | Path, root: str | Path, what: str, *, allow: bool = False, hint: str = ""
) -> Path:
    """Refuse ``path`` (a file wbsafe is about to read) when it resolves outside ``root``.

    Returns the path as given. ``root`` itself may be a symlink (the user gave it); only
    what lies under it is held to it. With the opt-in (``allow`` or the environment
    variable), an outside target is followed and an OutsideLinkWarning names it.
    """
    path, root = Path(path), Path(root)
    target = resolve_strict(path, what)
    home = resolve_strict(root, "the model directory")
    if any(target == h or h in target.parents for h in _homes(home)):
        return path
    message = f"{what} points outside {root} (to {target})"
    if not (allow or outside_links_allowed()):
        raise UnsafeCheckpointError(
            f"{message}; refused: wbsafe screens only files inside what it was given "
            f"({hint or 'pass'} {FLAG} to follow such links)",
            path,
        )
    warnings.warn(f"{path}: {message}; followed", OutsideLinkWarning, stacklevel=2)
    return path


def _homes(home: Path) -> list[Path]:
    """Where files of the model directory ``home`` may live: the directory, and for a
    Hugging Face cache snapshot (``models--org--name/snapshots/REV``, whose files are links
    to ``../../blobs``) that repository's own ``blobs`` folder."""
    blobs = home.parent.parent / "blobs"
    if home.parent.name == "snapshots" and home.parent.parent.name.startswith("models--"):
        return [home, blobs]
    return [home]


def check_inside_all(paths: list[Path], root: str | Path, what: str) -> list[Path]:
    """:func:`check_inside` for each of ``paths`` (the files of one directory)."""
    return [check_inside(p, root, f"{what} {p.name}") for p in paths]


def named_base(adapter_dir: str | Path, named: str, *, allow: bool = False) -> Path:
    """The local base an adapter's ``base_model_name_or_path`` names, when the caller gave
    only the adapter. A base inside the adapter directory is taken. One outside it (absolute,
    or climbing out with ``..``), or a hub id, is a base the user never named: refused unless
    ``allow`` (the library's ``load_model(..., follow_named_base=True)``) or the opt-in, so
    a hostile adapter cannot choose which model wbsafe loads and vets; every CLI command
    takes the base explicitly (``--base``)."""
    adapter_dir = Path(adapter_dir)
    what = f"the base {named!r} named by adapter_config.json"
    if not named or not isinstance(named, str):
        raise AdapterMismatchError(
            "adapter_config.json names no base (base_model_name_or_path); pass --base",
            adapter_dir / "adapter_config.json",
        )
    relative = adapter_dir / named
    candidate = relative if named and relative.is_dir() else Path(named)
    if candidate.is_dir():
        hint = "give the base explicitly with --base, or pass"
        return check_inside(candidate, adapter_dir, what, allow=allow, hint=hint)
    if not (allow or outside_links_allowed()):
        raise UnsafeCheckpointError(
            f"{what} is not inside the adapter; refused: give the base explicitly (--base) "
            f"or pass {FLAG}",
            adapter_dir / "adapter_config.json",
        )
    return candidate
