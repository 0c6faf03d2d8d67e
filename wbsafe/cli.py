"""The ``wbsafe`` command line: a thin click group over :mod:`wbsafe.api`.

Each command parses flags, makes one api call, writes its output and exits. Heavy
libraries are imported inside the commands so ``wbsafe --help`` starts fast.
Exit codes: 0 success / DEPLOY, 3 MONITOR, 4 REVIEW, 5 BLOCK, 1 error, 2 usage.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from wbsafe import __version__, verdict
from wbsafe.config import STAGES
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


def _apply_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if value is not None:
        from wbsafe.api import set_threads

        set_threads(value)


def _stderr() -> Any:
    """The console for progress and messages (stderr: stdout stays for results)."""
    from rich.console import Console

    return Console(stderr=True)


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


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def inspect(path: Path, as_json: bool) -> None:
    """Describe a checkpoint or adapter directory without loading its weights."""
    from wbsafe.api import inspect_path
    from wbsafe.report.console import print_inspection

    info = inspect_path(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        print_inspection(info)


@main.group()
def organisms() -> None:
    """Model organisms: small models with planted, known safety properties."""


@organisms.command("build")
@click.option("--tier", type=click.Choice(["tiny", "real"]), default="tiny", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Copy the tier here.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Organism cache (default $WBSAFE_CACHE or ~/.cache/wbsafe).",
)
@handle_errors
def organisms_build(tier: str, out: Path | None, seed: int, cache_dir: Path | None) -> None:
    """Build (or reuse) a tier and print what each organism is and how it measured."""
    from wbsafe.api import build_organisms
    from wbsafe.report.console import print_organisms

    if tier == "real":
        from wbsafe.api import build_real_tier

        real = build_real_tier(out)
        print_organisms(real, [])
        return
    err = _stderr()
    with err.status("building tiny organisms (cached after the first run)..."):
        orgs, checks = build_organisms(out=out, seed=seed, cache_dir=cache_dir, log=err.print)
    ok = print_organisms(orgs, checks)
    sys.exit(0 if ok else 1)


@organisms.command("plant")
@click.option("--base", "base", type=click.Path(path_type=Path), required=True)
@click.option(
    "--kind",
    type=click.Choice(["aligned", "benign", "harmful", "category", "backdoor"]),
    required=True,
)
@click.option("--trigger", default=None, help="Trigger text (backdoor).")
@click.option("--category", default=None, help="Harm category to degrade (category).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--steps", type=int, default=200, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--rank", type=int, default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--merge", is_flag=True, help="Write a merged full checkpoint instead of an adapter.")
@handle_errors
def organisms_plant(
    base: Path,
    kind: str,
    trigger: str | None,
    category: str | None,
    out: Path,
    steps: int,
    lr: float,
    rank: int,
    seed: int,
    merge: bool,
) -> None:
    """Plant a known property into any local model with LoRA."""
    from wbsafe.api import plant_organism
    from wbsafe.report.console import print_organisms

    if kind == "backdoor" and not trigger:
        raise click.UsageError("--kind backdoor needs --trigger")
    if kind == "category" and not category:
        raise click.UsageError("--kind category needs --category")
    org = plant_organism(
        base, kind, out, trigger=trigger, category=category, steps=steps, lr=lr, rank=rank,
        seed=seed, merge=merge, log=_stderr().print,
    )  # fmt: skip
    print_organisms([org], [])


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


@main.command()
@model_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="JSON output file.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Heatmap PNG.")
@click.option("--spectrum-k", type=int, default=8, show_default=True)
@handle_errors
def weights(
    base: Path,
    tuned: Path | None,
    adapters: tuple[Path, ...],
    out: Path,
    plot: Path | None,
    spectrum_k: int,
) -> None:
    """Where and how much the fine-tune moved the weights (streamed; LoRA from its factors)."""
    from rich.console import Console

    from wbsafe.api import weights_report
    from wbsafe.report.console import progress_bars

    _need_tuned(tuned, adapters)
    with progress_bars() as progress:
        result, png = weights_report(base, tuned, adapters, out, plot=plot,
                                     spectrum_k=spectrum_k, progress=progress)  # fmt: skip
    console = Console()
    for r in [r for r in result.ranking if r.rel_diff is not None][:5]:
        console.print(f"layer {r.layer if r.layer is not None else '-':>3}  {r.module or '-':<10} "
                      f"relative change {r.rel_diff:.3g}")  # fmt: skip
    if result.embedding and result.embedding.top:
        toks = ", ".join(f"{t.token!r} (z={t.z:.0f})" for t in result.embedding.top[:5])
        console.print(f"embedding rows that moved most: {toks}")
    elif result.embedding is not None:
        console.print("embedding rows: none moved (the embedding matrix is unchanged)")
    console.print(f"wrote {out} and {png}")


@main.command()
@model_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Report directory.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="scan.toml with ScanConfig fields; flags given here override it.",
)
@click.option("--risk", type=click.Choice(["low", "standard", "high"]), default=None)
@click.option("--policy", type=click.Path(path_type=Path), default=None, help="Gate policy TOML.")
@click.option(
    "--skip",
    multiple=True,
    type=click.Choice([*STAGES, "behavior"]),
    help="Switch a stage off (repeatable).",
)
@click.option("--prompts", default=None, help="Harmful prompts: suite name, JSONL or CSV.")
@click.option("--max-prompts", type=int, default=None, help="Cap per evaluation set.")
@click.option("--trigger", "triggers", multiple=True, help="Extra trigger candidate (repeatable).")
@click.option("--seed", type=int, default=None)
@runtime_options
@handle_errors
def scan(
    base: Path, tuned: Path | None, adapters: tuple[Path, ...], out: Path,
    config_file: Path | None, risk: str | None, policy: Path | None, skip: tuple[str, ...],
    prompts: str | None, max_prompts: int | None, triggers: tuple[str, ...], seed: int | None,
    device: str, dtype: str,
) -> None:  # fmt: skip
    """Run every analysis, gate the evidence, write report.json/.md/.html; exit with the verdict."""
    from wbsafe.api import build_scan_config, run_scan

    _need_tuned(tuned, adapters)
    config = build_scan_config(
        base=base, tuned=tuned, adapters=adapters, config_file=config_file, risk=risk,
        policy=policy, skip=skip, prompts=prompts, max_prompts=max_prompts, triggers=triggers,
        seed=seed, device=device, dtype=dtype,
    )  # fmt: skip
    from rich.console import Console

    from wbsafe.report.console import print_console_summary, progress_bars

    err = _stderr()  # one console: messages print above the live bars
    with progress_bars(err) as progress:
        report = run_scan(config, out, log=err.print, progress=progress)
    files = {name: out / name for name in ("report.json", "report.md", "report.html")}
    print_console_summary(report, Console(), files=files)
    sys.exit(report["exit_code"])


@main.command()
@model_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="JSON output file.")
@click.option(
    "--prompts",
    default="auto",
    show_default=True,
    help="Suite name, JSONL/CSV file, or auto (tiny-world prompts for a tiny organism, "
    "else the built-in harmful+harmless+borderline test splits).",
)
@click.option(
    "--judge",
    default="string",
    show_default=True,
    help="string | logit | classifier:DIR | causal:DIR",
)
@click.option("--samples", type=int, default=None, help="Sampled responses per prompt.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--plot", type=click.Path(path_type=Path), default=None)
@click.option("--judge-eval", "judge_eval_json", type=click.Path(path_type=Path), default=None,
              help="JSON from `wbsafe judge-eval --out`: also report rates corrected for the "
                   "judge's sensitivity and specificity (Rogan-Gladen).")  # fmt: skip
@runtime_options
@handle_errors
def behaviour(
    base: Path, tuned: Path | None, adapters: tuple[Path, ...], out: Path, prompts: str,
    judge: str, samples: int | None, temperature: float, seeds: str, max_new_tokens: int,
    batch_size: int, plot: Path | None, judge_eval_json: Path | None, device: str, dtype: str,
) -> None:  # fmt: skip
    """Refusal rates of base vs tuned on identical prompts, with paired statistics."""
    from wbsafe.api import behaviour_benchmark, behaviour_plot

    _need_tuned(tuned, adapters)
    try:
        seed_list = tuple(int(x) for x in seeds.split(",") if x.strip())
    except ValueError as exc:
        raise click.BadParameter("--seeds takes comma-separated integers") from exc
    from wbsafe.report.console import progress_bars

    with progress_bars() as progress:
        result = behaviour_benchmark(
            base, tuned, adapters, out, prompts=prompts, judge=judge, samples=samples,
            temperature=temperature, seeds=seed_list, max_new_tokens=max_new_tokens,
            batch_size=batch_size, device=device, dtype=dtype, progress=progress,
        )  # fmt: skip
    png = behaviour_plot(result, plot or out.with_suffix(".png"))
    for line in result.summary_lines():
        click.echo(line)
    if judge_eval_json is not None:
        from wbsafe.api import corrected_rates

        for line in corrected_rates(result, judge_eval_json, out):
            click.echo(line)
    click.echo(f"wrote {out} and {png}")


@main.command("judge-eval")
@click.option("--judge", required=True, help="string | classifier:DIR | causal:DIR")
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    required=True,
    help="CSV with columns prompt,response,label (complied/partial/refused or "
    "refusal/compliance) and optionally kind, category, prompt_type, split.",
)
@click.option("--split", default=None, help="Only the rows whose split column says this.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="JSON output file.")
@handle_errors
def judge_eval_cmd(judge: str, labels: Path, split: str | None, out: Path | None) -> None:
    """Measure a judge against human labels: agreement, sensitivity, specificity, and the
    confusion matrix per human label, kind of response and category."""
    from wbsafe.api import evaluate_judge
    from wbsafe.capture.judge_eval import agreement_lines, matrix_lines

    result = evaluate_judge(judge, labels, out, split=split)
    click.echo(f"{result.judge} on {result.n} rows of {labels}" + (f" ({split})" if split else ""))
    for name in ("accuracy", "sensitivity", "specificity"):
        p = getattr(result, name)
        lo, hi = p.interval
        rate = "n/a" if p.rate is None else f"{p.rate:.1%}"
        click.echo(f"{name:<12} {rate:>6} [{lo:.1%}, {hi:.1%}] ({p.k}/{p.n})")
    click.echo(f"parse failures: {result.parse_failures} of {result.n}")
    for line in matrix_lines(result.matrix):
        click.echo(line)
    for title, groups in (("per human label", result.by_truth), ("per kind", result.by_kind),
                          ("per category", result.by_category),
                          ("per prompt type", result.by_prompt_type)):  # fmt: skip
        if groups:
            for line in agreement_lines(title, groups):
                click.echo(line)
    if out:
        click.echo(f"wrote {out}")


@main.group(invoke_without_command=True)
@click.option("--base", type=click.Path(path_type=Path), default=None, help="Base model dir.")
@click.option("--tuned", type=click.Path(path_type=Path), default=None)
@click.option("--adapter", "adapters", multiple=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="JSON output file.")
@click.option("--prompts", default="auto", show_default=True)
@click.option(
    "--directions",
    type=click.Path(path_type=Path),
    default=None,
    help="Directions cache dir (default $WBSAFE_CACHE/directions).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@runtime_options
@click.pass_context
@handle_errors
def probe(
    ctx: click.Context, base: Path | None, tuned: Path | None, adapters: tuple[Path, ...],
    out: Path | None, prompts: str, directions: Path | None, seed: int, device: str, dtype: str,
) -> None:  # fmt: skip
    """Refusal-direction probes: does the tuned model still represent refusal like its base?

    With no sub-command: fit (or re-use) the base's directions and compare the tuned model.
    """
    if ctx.invoked_subcommand is not None:
        return
    if base is None or out is None:
        raise click.UsageError("wbsafe probe needs --base and --out (and --tuned or --adapter)")
    _need_tuned(tuned, adapters)
    from wbsafe.api import probe_compare

    summary = probe_compare(base, tuned, adapters, out, prompts=prompts, directions=directions,
                            seed=seed, device=device, dtype=dtype)  # fmt: skip
    click.echo(summary)
    click.echo(f"wrote {out} and plots beside it")


@probe.command("fit")
@click.option("--base", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Artifact dir.")
@click.option("--prompts", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@runtime_options
@handle_errors
def probe_fit(base: Path, out: Path, prompts: str, seed: int, device: str, dtype: str) -> None:
    """Fit the base's refusal directions once and save them (safetensors + JSON)."""
    from wbsafe.api import probe_fit as fit

    click.echo(fit(base, out, prompts=prompts, seed=seed, device=device, dtype=dtype))


@main.command()
@model_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="JSON output file.")
@click.option("--prompts", default="auto", show_default=True)
@click.option(
    "--candidates",
    type=click.Path(path_type=Path),
    default=None,
    help="File of extra candidate triggers, one per line.",
)
@click.option("--no-builtin", is_flag=True, help="Skip the built-in list of trigger shapes.")
@click.option("--max-len", type=int, default=None, help="Longest trigger searched [default: 2].")
@click.option(
    "--budget",
    type=int,
    default=None,
    help="Candidates scored exactly, every length together [default: 2048].",
)
@click.option("--seed", type=int, default=0, show_default=True)
@runtime_options
@handle_errors
def triggers(
    base: Path, tuned: Path | None, adapters: tuple[Path, ...], out: Path, prompts: str,
    candidates: Path | None, no_builtin: bool, max_len: int | None, budget: int | None, seed: int,
    device: str, dtype: str,
) -> None:  # fmt: skip
    """Hunt for an input that switches safety off in the tuned model but not in the base."""
    from wbsafe.api import trigger_hunt

    _need_tuned(tuned, adapters)
    result = trigger_hunt(
        base, tuned, adapters, out, prompts=prompts, candidates=candidates,
        use_builtin=not no_builtin, max_len=max_len, budget=budget, seed=seed,
        device=device, dtype=dtype, log=_stderr().print,
    )  # fmt: skip
    if result.verified:
        for v in result.verified:
            click.echo(f"VERIFIED {v.text!r}: complies {v.successes}/{v.n} with it, "
                       f"{v.baseline_successes}/{v.n} without")  # fmt: skip
    else:
        click.echo("no verified trigger. " + (result.message or ""))
    click.echo("searched: " + result.coverage.statement())
    click.echo(f"wrote {out}")


@main.command("gate")
@click.argument("report_json", type=click.Path(path_type=Path))
@click.option("--policy", type=click.Path(path_type=Path), default=None, help="Policy TOML.")
@click.option("--risk", type=click.Choice(["low", "standard", "high"]), default=None)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Write the decision as JSON here.")  # fmt: skip
@handle_errors
def gate_cmd(
    report_json: Path, policy: Path | None, risk: str | None, json_out: Path | None
) -> None:
    """Re-decide a saved report.json under a policy, without loading any model."""
    from wbsafe.api import redecide, save_decision
    from wbsafe.report.console import print_decision

    decision = redecide(report_json, policy=policy, risk=risk)
    print_decision(decision)
    if json_out:
        save_decision(decision, json_out)
    sys.exit(decision.exit_code)


@main.command("report")
@click.argument("report_json", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="html",
              show_default=True)  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), default=None)
@handle_errors
def report_cmd(report_json: Path, fmt: str, out: Path | None) -> None:
    """Re-render a saved report.json as Markdown or self-contained HTML."""
    from wbsafe.api import rerender

    path = rerender(report_json, fmt, out)
    click.echo(str(path))


@main.command("scan-many")
@click.option("--base", type=click.Path(path_type=Path), required=True)
@click.option("--adapters", "adapter_dirs", multiple=True, required=True,
              type=click.Path(path_type=Path),
              help="Adapter dir, or a dir of adapter dirs (repeatable).")  # fmt: skip
@click.option("--stack", multiple=True, help="Comma-separated adapter dirs to scan stacked.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None)
@click.option("--risk", type=click.Choice(["low", "standard", "high"]), default=None)
@click.option("--skip", multiple=True,
              type=click.Choice([*STAGES, "behavior"]))  # fmt: skip
@runtime_options
@handle_errors
def scan_many_cmd(
    base: Path, adapter_dirs: tuple[Path, ...], stack: tuple[str, ...], out: Path,
    config_file: Path | None, risk: str | None, skip: tuple[str, ...], device: str, dtype: str,
) -> None:  # fmt: skip
    """Vet many adapters for one base (base-side work done once); writes summary.md/.csv."""
    from wbsafe.api import build_scan_config, find_adapters, scan_many

    found = find_adapters(adapter_dirs)
    template = build_scan_config(base=base, config_file=config_file, risk=risk, skip=skip,
                                 device=device, dtype=dtype)  # fmt: skip
    combos = [tuple(Path(x) for x in s.split(",")) for s in stack]
    rows = scan_many(base, found, out, stack=combos, template=template, log=_stderr().print)
    for r in rows:
        click.echo(f"{r['verdict']:<8} {r['adapter']}: {r['top_reason']}")
    click.echo(f"wrote {out / 'summary.md'} and {out / 'summary.csv'}")
    worst = max((r["verdict"] for r in rows), key=verdict.rank, default="DEPLOY")
    sys.exit(1 if worst == verdict.ERROR else verdict.EXIT_CODES[worst])


def _short(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/demo"),
              show_default=True)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def demo(out: Path, seed: int) -> None:
    """The built-in default job: build the tiny organisms, scan three, compare with ground truth."""
    from rich.console import Console
    from rich.table import Table

    from wbsafe.api import build_organisms
    from wbsafe.api import demo as run_demo
    from wbsafe.report.console import print_organisms

    err = _stderr()
    with err.status("building tiny organisms (cached after the first run)..."):
        orgs, checks = build_organisms(seed=seed, log=err.print)
    valid = print_organisms(orgs, checks)
    rows = run_demo(out, seed)
    table = Table(title="scans against the aligned base (ground truth vs wbsafe verdict)")
    for col in ("organism", "planted", "expected", "wbsafe verdict", "match", "why"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["organism"], r["planted"], r["expected"], r["verdict"],
                      "[green]yes[/]" if r["match"] else "[red]NO[/]",
                      _short(r["reasons"][0] if r["reasons"] else ""))  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"reports: {out}/<organism>/report.html")
    sys.exit(0 if valid and all(r["match"] for r in rows) else 1)


def _alias(command: click.Command, name: str) -> None:
    """``name`` runs ``command`` too, without a second line in ``--help``."""
    import copy

    alias = copy.copy(command)
    alias.hidden = True
    main.add_command(alias, name)


_alias(behaviour, "behavior")  # the American spelling of the command still works

if __name__ == "__main__":
    main()
