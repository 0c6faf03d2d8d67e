"""The ``wbsafe`` click group and the options and error handling its commands share."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from wbsafe import __version__
from wbsafe.errors import WbsafeError

F = TypeVar("F", bound=Callable[..., Any])


def runtime_options(fn: F) -> F:
    """``--device``, ``--dtype`` and ``--threads``, shared by every command that loads a model."""
    fn = click.option(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice).",
        callback=_apply_threads,
        expose_value=False,
    )(fn)
    fn = click.option(
        "--dtype",
        type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
        default="auto",
        show_default=True,
        help="auto: bfloat16 on a GPU, float32 on the CPU.",
    )(fn)
    fn = click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="auto takes a GPU when one is present.",
    )(fn)
    return fn


def placement_options(fn: F) -> F:
    """``--device-map``, ``--offload-folder`` and ``--max-batch`` (the scan commands)."""
    fn = click.option(
        "--max-batch",
        type=click.IntRange(min=1),
        default=None,
        help="Cap on the batches sized from the device's free memory.",
    )(fn)
    fn = click.option(
        "--offload-folder",
        type=click.Path(path_type=Path),
        default=None,
        help="Folder for the layers a device map offloads to disk.",
    )(fn)
    fn = click.option(
        "--device-map",
        default=None,
        help="Place layers with accelerate: auto, balanced, balanced_low_0, sequential "
        "or a JSON file mapping modules to 0/cuda:N/cpu/disk.",
    )(fn)
    return fn


def _apply_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if value is not None:
        from wbsafe.api import set_threads

        set_threads(value)


def _stderr() -> Any:
    """The console for progress and messages (stderr: stdout stays for results)."""
    from rich.console import Console

    return Console(stderr=True)


def _log(console: Any, clock: Callable[[], float] = time.monotonic) -> Callable[[str], None]:
    """A log callback printing each message as it is, not as rich markup: "[weights] done"
    keeps its stage name, and text from the files scanned (names, triggers) styles nothing.
    Each line starts with the time since the command began (``mm:ss``, ``h:mm:ss`` past an
    hour): a scan's hunt logs a line per phase for tens of minutes."""
    start = clock()

    def say(message: str) -> None:
        s = int(clock() - start)
        h, m = divmod(s // 60, 60)
        elapsed = f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m:02d}:{s % 60:02d}"
        console.print(f"{elapsed} {message}", markup=False, highlight=False)

    return say


def handle_errors(fn: F) -> F:
    """Turn a WbsafeError into one clear line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WbsafeError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wbsafe")
@click.option("--allow-outside-links", is_flag=True, help="Follow links out of a model folder "
              "and adapter-named bases outside the adapter (refused by default; warned).")  # fmt: skip
def main(allow_outside_links: bool) -> None:
    """White-box safety screening of fine-tuned language models.

    Compares a fine-tuned model (full checkpoint or PEFT adapters) with its base through
    weight diffs, refusal-direction probes, trigger hunting and behavioural refusal
    benchmarks, and turns the evidence into DEPLOY / MONITOR / REVIEW / BLOCK.
    """
    if allow_outside_links:
        from wbsafe import api

        api.allow_outside_links()


def model_options(fn: F) -> F:
    """``--base``, ``--tuned`` and repeatable ``--adapter``, shared by the analysis commands."""
    fn = click.option(
        "--adapter",
        "adapters",
        multiple=True,
        type=click.Path(path_type=Path),
        help="PEFT adapter dir on --base; repeat to stack in order.",
    )(fn)
    fn = click.option(
        "--tuned",
        type=click.Path(path_type=Path),
        default=None,
        help="Fine-tuned checkpoint dir (or an adapter dir).",
    )(fn)
    fn = click.option(
        "--base", type=click.Path(path_type=Path), required=True, help="Base model dir."
    )(fn)
    return fn


def _need_tuned(tuned: Path | None, adapters: tuple[Path, ...]) -> None:
    if tuned is None and not adapters:
        raise click.UsageError("give --tuned DIR or at least one --adapter DIR")


def _alias(command: click.Command, name: str) -> None:
    """``name`` runs ``command`` too, without a second line in ``--help``."""
    import copy

    alias = copy.copy(command)
    alias.hidden = True
    main.add_command(alias, name)
