"""`sanasr eval`: score restored images against references (pyiqa metrics, stated protocol), run a model
end to end and score it, or rank the checkpoints of a training run."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sanasr_cli.cli import prompt_options as po
from sanasr_cli.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    check_report_paths,
    console,
    fail,
    full_vae_option,
    quiet_libraries,
    resolve_device,
    resolve_precision,
)


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
    )


def _print_metrics_list() -> None:
    from sanasr_cli.evaluation.metrics import DEFAULT_METRICS, METRICS

    out = type(console)(soft_wrap=True, highlight=False)  # stdout, one line per field (no table wrapping)
    for m in METRICS.values():
        default = ", default" if m.name in DEFAULT_METRICS else ""
        out.print(
            f"[bold]{m.name}[/] ({m.mode}, {'lower' if m.lower_better else 'higher'} is better{default})"
        )
        out.print(f"    {m.variant}")
        out.print(f"    {m.description}")
    out.print(
        "FR: needs --hr (full reference); NR: no reference. Weights of all but psnr/ssim are downloaded "
        "by pyiqa on first use into $TORCH_HOME/hub/pyiqa (default ~/.cache/torch/hub/pyiqa)."
    )


def _print_means(result, title: str) -> None:
    from sanasr_cli.evaluation.report import protocol_text

    table = Table(title=title, title_justify="left", caption=f"protocol {protocol_text(result.protocol)}")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("better")
    table.add_column("pyiqa variant", overflow="fold")
    for m in result.metrics:
        v = result.means.get(m.name)
        shown = "unavailable" if m.name in result.unavailable else ("-" if v is None else f"{v:.4f}")
        table.add_row(m.name, shown, "lower" if m.lower_better else "higher", m.variant)
    type(console)().print(table)


def eval_command(
    sr: Path = typer.Option(
        None, "--sr", help="Folder of restored images to score (paired with --hr by file stem)."
    ),
    hr: Path = typer.Option(None, "--hr", help="Folder of reference (ground-truth) images."),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Run this model end to end on --lq first (a preset or a "
        "model directory), then score its outputs.",
    ),
    lq: Path = typer.Option(
        None, "--lq", help="Folder of low-quality inputs (with --model or --rank-checkpoints)."
    ),
    save_dir: Path = typer.Option(
        None,
        "--save-dir",
        help="Keep the restored images here (default: a temporary folder, removed afterwards).",
    ),
    rank_checkpoints: Path = typer.Option(
        None,
        "--rank-checkpoints",
        help="Score every RUN_DIR/checkpoint-*/ of "
        "a training run on --lq (and --hr) and print them ranked, best first.",
    ),
    metric: str = typer.Option("musiq", "--metric", help="The one metric that ranks checkpoints."),
    metrics: str = typer.Option(
        None,
        "--metrics",
        help="Comma-separated metrics (default: psnr,ssim,lpips,dists,"
        "niqe,musiq,maniqa,clipiqa; only no-reference ones without --hr). See --list-metrics.",
    ),
    list_metrics: bool = typer.Option(
        False, "--list-metrics", help="List the metrics and their exact pyiqa variants."
    ),
    protocol: str = typer.Option(
        "full",
        "--protocol",
        help="full: whole images (sizes must agree); patch: the 256x256 centre crop of both.",
    ),
    json_out: str = typer.Option(
        None,
        "--json",
        help="Write means, per-image values, variants, protocol and versions to this JSON file ('-': stdout, "
        "instead of the table).",
    ),
    csv_out: Path = typer.Option(None, "--csv", help="Write one row per image to this CSV file."),
    scale: float = typer.Option(4.0, "--scale", "-s", min=1.0, help="Upscale factor when a model runs."),
    color_fix: str = typer.Option(
        "none",
        "--color-fix",
        help="Colour fix when a model runs (--model, --rank-checkpoints): none (default: the paper's "
        "pipeline, as reported), wavelet (`sanasr upscale`'s default), adain.",
    ),
    base: str = typer.Option(None, "--base", help="Hub id or local folder of the pretrained SANA base."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N (model and metrics)."),
    precision: str = typer.Option("auto", "--precision", help="Model precision: auto, fp32, fp16, bf16."),
    seed: int = typer.Option(0, "--seed", help="Seed of random-weight presets (tiny)."),
    tagger: str = po.TAGGER,
    tagger_weights: Path = po.TAGGER_WEIGHTS,
    tagger_model: str = po.TAGGER_MODEL,
    tag_vocab: Path = po.TAG_VOCAB,
    template: str = po.TEMPLATE,
    tag_cache: str = po.TAG_CACHE,
    prompt: str = typer.Option(
        None,
        "--prompt",
        help="Extra words put before the tags and the quality template (when a model runs).",
        rich_help_panel="Prompt",
    ),
    full_vae: bool = full_vae_option(),
):
    """Score super-resolved images with pyiqa metrics, stating exactly what was computed.

    \b
    sanasr eval --sr results/ --hr gt/                          score existing outputs
    sanasr eval --sr results/ --metrics musiq,niqe              no references: no-reference metrics only
    sanasr eval --sr results/ --hr gt/ --protocol patch --json scores.json --csv per_image.csv
    sanasr eval --model MODEL_DIR --lq lq/ --hr gt/ --save-dir out/   run the model, then score
    sanasr eval --rank-checkpoints runs/exp1 --lq val_lq/ --metric musiq
    sanasr eval --list-metrics

    Files are paired by stem (`0801_SR.png` <-> `0801.png`), never by sort order. PSNR/SSIM are on the Y
    channel of YCbCr; every metric's pyiqa variant is printed and stored. Exit code: 0 when everything was
    computed, 1 when a metric could not run (e.g. its weights are missing offline; the others still run) or
    an image failed, 2 for usage errors.

    A model (--model, --rank-checkpoints) runs the paper's pipeline: the tagger reads the LQ input and no
    colour fix is applied (add one with --color-fix; `sanasr upscale` defaults to wavelet).
    """
    if list_metrics:
        _print_metrics_list()
        return
    from sanasr_cli.errors import MissingWeightsError, ModelDirError, SanaSRError
    from sanasr_cli.evaluation.metrics import (
        DEFAULT_METRICS,
        METRICS,
        PROTOCOLS,
        MetricUnavailable,
        parse_metrics,
    )
    from sanasr_cli.evaluation.pairing import pair_folders

    if protocol not in PROTOCOLS:
        raise fail(f"unknown protocol '{protocol}'; use one of {', '.join(PROTOCOLS)}", EXIT_USAGE)
    modes = [
        m
        for m, on in (
            ("--sr", sr is not None),
            ("--model", model is not None),
            ("--rank-checkpoints", rank_checkpoints is not None),
        )
        if on
    ]
    if len(modes) != 1:
        raise fail(
            "give exactly one of --sr DIR (score outputs), --model M (run a model on --lq) or "
            "--rank-checkpoints RUN_DIR" + (f"; got {' and '.join(modes)}" if modes else ""),
            EXIT_USAGE,
        )
    if (model or rank_checkpoints) and lq is None:
        raise fail(f"{modes[0]} needs --lq (the low-quality inputs)", EXIT_USAGE)
    check_report_paths(("--json", json_out), ("--csv", csv_out))  # before any scoring, not after it
    if not math.isfinite(scale):
        raise fail(f"--scale must be a finite number, not {scale}", EXIT_USAGE)
    from sanasr_cli.pipeline.color import COLOR_FIXES

    if color_fix not in COLOR_FIXES:
        raise fail(f"--color-fix takes {', '.join(COLOR_FIXES)}, not '{color_fix}'", EXIT_USAGE)
    dev = resolve_device(device)
    quiet_libraries()

    prompt_flags = (tagger, tagger_weights, tagger_model, tag_vocab, template, tag_cache)
    try:
        if rank_checkpoints is not None:
            specs = parse_metrics([metric], need_reference=hr is not None)
            lq_pairs = pair_folders(lq, hr, sr_what="--lq")
        else:
            default = (
                DEFAULT_METRICS if hr is not None else [m for m in DEFAULT_METRICS if METRICS[m].mode == "NR"]
            )
            specs = parse_metrics(metrics or list(default), need_reference=hr is not None)
            pairs = pair_folders(
                sr if sr is not None else lq, hr, sr_what="--sr" if sr is not None else "--lq"
            )
    except SanaSRError as e:
        raise fail(str(e), EXIT_USAGE) from None

    if save_dir is not None:
        from sanasr_cli.evaluation.model_eval import check_save_dir

        try:
            check_save_dir(save_dir, lq, hr, sr)
        except SanaSRError as e:
            raise fail(str(e), EXIT_USAGE) from None
    tmp = None
    if (model or rank_checkpoints) and save_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="sanasr-eval-"))
    out_dir = save_dir or tmp
    try:
        if rank_checkpoints is not None:
            code = _rank(
                rank_checkpoints,
                lq_pairs,
                lq,
                specs[0],
                out_dir,
                protocol,
                dev,
                precision,
                base,
                json_out,
                lambda m: _upscale_options(m, scale, prompt, prompt_flags, dev, None, color_fix),
                color_fix,
            )
            raise typer.Exit(code)
        model_info = None
        failed_upscales = []
        if model is not None:
            from sanasr_cli.models.sanasr import load_model

            dtype = resolve_precision(precision, dev)
            with console.status(f"loading model {model} on {dev} ..."):
                try:
                    sr_model = load_model(model, device=dev, dtype=dtype, base=base, seed=seed, full_vae=full_vae)
                except ModelDirError as e:
                    raise fail(str(e), EXIT_USAGE) from None
                except MissingWeightsError as e:
                    raise fail(str(e), EXIT_FAILED) from None
            if sr_model.description.random_weights:
                console.print(
                    f"[yellow]note:[/] '{model}' has random (untrained) weights: scores show the "
                    "pipeline, not SR quality."
                )
            options = _upscale_options(
                sr_model, scale, prompt, prompt_flags, dev, [p.sr for p in pairs], color_fix
            )
            model_info = {
                "spec": model,
                "description": sr_model.description.to_dict(),
                "scale": scale,
                "color_fix": color_fix,
                "device": str(dev),
                "precision": str(dtype).replace("torch.", ""),
                "outputs": str(out_dir),
                "prompt_rule": options.prompt_rule.to_dict(),
                "user_prompt": prompt,
            }
            pairs, failed_upscales = _run_model(
                sr_model,
                pairs,
                lq,
                out_dir,
                options,
            )
            del sr_model
        result = _score(pairs, specs, protocol, dev)
    except MetricUnavailable as e:
        raise fail(str(e), EXIT_FAILED) from None
    except SanaSRError as e:  # e.g. sizes that do not fit the protocol
        raise fail(str(e), EXIT_USAGE) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    for message in result.unavailable.values():
        console.print(f"[bold red]metric unavailable:[/] {message}", highlight=False, soft_wrap=True)
    for s in result.failed_images:
        console.print(f"[red]failed:[/] {s.error}", highlight=False, soft_wrap=True)
    converted = {f: m for s in result.images for f, m in s.converted.items()}
    if converted:
        from sanasr_cli.evaluation.metrics import CONVERSION_RULE

        listed = ", ".join(f"{f} ({m})" for f, m in list(converted.items())[:8])
        console.print(
            f"[yellow]note:[/] {len(converted)} file(s) not RGB, {CONVERSION_RULE}: {listed}"
            + (" ..." if len(converted) > 8 else ""),
            highlight=False,
            soft_wrap=True,
        )
    if json_out != "-":
        pairs_done = len(result.images) - len(result.failed_images)
        _print_means(result, f"{pairs_done} image pairs" + (f" ({model})" if model else ""))
    _write_outputs(
        result, model_info, json_out, csv_out, {"failed_upscales": [r.to_dict() for r in failed_upscales]}
    )
    if not result.ok or failed_upscales:
        raise typer.Exit(EXIT_FAILED)


def _upscale_options(sr_model, scale, prompt, prompt_flags, dev, pretag_images, color_fix="none"):
    """The same prompt rule and tagger `sanasr upscale` would use with these flags (shared prompt options);
    the colour fix is eval's own default (none: the paper's pipeline), not upscale's."""
    from sanasr_cli.pipeline.upscale import UpscaleOptions

    tagger, tagger_weights, tagger_model, tag_vocab, template, tag_cache = prompt_flags
    rule = po.asked_prompt_rule(
        sr_model.description.prompt,
        tagger,
        tagger_weights,
        tagger_model,
        tag_vocab,
        template,
        warn=sr_model.source_dir is not None,
    )  # presets have no trained rule
    options = UpscaleOptions(
        scale=scale,
        prompt_rule=rule,
        user_prompt=prompt,
        tagger=po.build_tagger(rule, dev, tag_cache),
        color_fix=color_fix,
    )
    if pretag_images is not None:
        po.pretag(options.tagger, pretag_images)
    return options


def _run_model(sr_model, lq_pairs, lq, out_dir, options):
    from sanasr_cli.evaluation.model_eval import upscale_pairs

    with _progress("upscale") as progress:
        task = progress.add_task("", total=len(lq_pairs))

        def on_done(rec):
            if rec.status != "ok":
                progress.console.print(f"[red]failed:[/] {rec.error}", highlight=False, soft_wrap=True)
            progress.update(task, advance=1, description=Path(rec.input).name)

        return upscale_pairs(sr_model, lq_pairs, lq, out_dir, options, on_done=on_done)


def _score(pairs, specs, protocol, dev):
    from sanasr_cli.evaluation.metrics import evaluate_pairs

    with _progress("score") as progress:
        task = progress.add_task("", total=len(pairs))
        return evaluate_pairs(
            pairs,
            specs,
            protocol=protocol,
            device=dev,
            on_image=lambda s: progress.update(task, advance=1, description=Path(s.sr).name),
        )


def _emit_json(json_out: str, data: dict) -> None:
    """Write the JSON report to a file (atomically), or to stdout for '-'."""
    import json

    from sanasr_cli.evaluation.report import write_json

    if json_out == "-":
        print(json.dumps(data, indent=2, allow_nan=False))
    else:
        write_json(json_out, data)
        console.print(f"JSON written to {json_out}")


def _write_outputs(result, model_info, json_out, csv_out, extra) -> None:
    from sanasr_cli.evaluation.report import eval_csv, eval_report, write_text_atomic

    if json_out is not None:
        _emit_json(json_out, eval_report(result, model=model_info, extra=extra))
    if csv_out is not None:
        write_text_atomic(csv_out, eval_csv(result))
        console.print(f"CSV written to {csv_out}")


def _rank(
    run_dir, lq_pairs, lq, spec, out_dir, protocol, dev, precision, base, json_out, options_for, color_fix
) -> int:
    from sanasr_cli.errors import ModelDirError
    from sanasr_cli.evaluation.model_eval import find_checkpoints, rank_checkpoints
    from sanasr_cli.evaluation.report import protocol_text, versions

    try:
        checkpoints = find_checkpoints(run_dir)
    except ModelDirError as e:
        raise fail(str(e), EXIT_USAGE) from None
    dtype = resolve_precision(precision, dev)
    with _progress("checkpoints") as progress:
        task = progress.add_task("", total=len(checkpoints))

        def on_checkpoint(cs):
            if cs.error:
                progress.console.print(
                    f"[red]failed:[/] {Path(cs.checkpoint).name}: {cs.error}", highlight=False, soft_wrap=True
                )
            progress.update(task, advance=1, description=Path(cs.checkpoint).name)

        ranked, _ = rank_checkpoints(
            run_dir,
            lq_pairs,
            lq,
            spec,
            out_dir,
            protocol=protocol,
            device=dev,
            dtype=dtype,
            base=base,
            options_for=options_for,
            on_checkpoint=on_checkpoint,
        )
    table = Table(
        title=f"checkpoints of {run_dir} ranked by {spec.name} ({'lower' if spec.lower_better else 'higher'}"
        f" is better), {len(lq_pairs)} images",
        title_justify="left",
        caption=f"{spec.variant}; protocol {protocol_text(protocol)}",
    )
    for col in ("rank", "checkpoint", "step", spec.name):
        table.add_column(col)
    for s in ranked:
        table.add_row(
            str(s.rank or "-"),
            Path(s.checkpoint).name,
            str(s.step),
            f"{s.score:.4f}" if s.score is not None else f"failed: {s.error}",
        )
    if json_out != "-":
        type(console)().print(table)
    if json_out is not None:
        _emit_json(
            json_out,
            {
                "run_dir": str(run_dir),
                "metric": spec.name,
                "variant": spec.to_dict(),
                "protocol": protocol,
                "protocol_description": protocol_text(protocol),
                "color_fix": color_fix,
                "num_images": len(lq_pairs),
                "ranking": [
                    {
                        "rank": s.rank,
                        "checkpoint": s.checkpoint,
                        "step": s.step,
                        "score": s.score,
                        "error": s.error,
                    }
                    for s in ranked
                ],
                "versions": versions(),
            },
        )
    return EXIT_FAILED if any(s.error for s in ranked) else 0


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("eval")(one_line_errors(eval_command))
