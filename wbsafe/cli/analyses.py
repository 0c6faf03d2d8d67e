"""One-analysis commands: ``weights``, ``behaviour``, ``judge-eval``, ``probe``, ``triggers``."""

from __future__ import annotations

from pathlib import Path

import click

from wbsafe.cli.app import (
    _alias,
    _log,
    _need_tuned,
    _stderr,
    handle_errors,
    main,
    model_options,
    runtime_options,
)


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
        device=device, dtype=dtype, log=_log(_stderr()),
    )  # fmt: skip
    if result.verified:
        for v in result.verified:
            click.echo(f"VERIFIED {v.text!r}: complies {v.successes}/{v.n} with it, "
                       f"{v.baseline_successes}/{v.n} without")  # fmt: skip
    else:
        click.echo("no verified trigger. " + (result.message or ""))
    click.echo("searched: " + result.coverage.statement())
    click.echo(f"wrote {out}")


_alias(behaviour, "behavior")  # the American spelling of the command still works
