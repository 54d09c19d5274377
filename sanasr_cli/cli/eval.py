"""`sanasr eval`: score restored images against references (pyiqa metrics, stated protocol), run a model
end to end and score it, or rank the checkpoints of a training run."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from types import SimpleNamespace

import typer
from rich.table import Table

from sanasr_cli.cli import options as opt
from sanasr_cli.cli import prompt_options as po
from sanasr_cli.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    check_report_paths,
    console,
    fail,
    load_model_or_fail,
    quiet_libraries,
    resolve_device,
    resolve_precision,
)


def _print_metrics_list() -> None:
    from sanasr_cli.evaluation.metrics import DEFAULT_METRICS, METRICS

    out = type(console)(soft_wrap=True, highlight=False)  # stdout, one line per field (no table wrapping)
    for m in METRICS.values():
        default = ", default" if m.name in DEFAULT_METRICS else ""
        out.print(f"[bold]{m.name}[/] ({m.mode}, {'lower' if m.lower_better else 'higher'} is better{default})")
        out.print(f"    {m.variant}")
        out.print(f"    {m.description}")
    offline = ", ".join(m.name for m in METRICS.values() if not m.needs_weights)
    out.print(
        f"FR: needs --hr (full reference); NR: no reference. Weights of all but {offline} are downloaded "
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


SR = typer.Option(None, "--sr", help="Folder of restored images to score (paired with --hr by file stem).")
HR = typer.Option(None, "--hr", help="Folder of reference (ground-truth) images.")
MODEL = typer.Option(
    None,
    "--model",
    "-m",
    help="Run this model end to end on --lq first (a preset or a model directory), then score its outputs.",
)
PEER = typer.Option(
    None,
    "--peer",
    help="Also run this peer restorer on --lq and score it the same way (repeatable; with or without --model): "
    "realesrgan-x4plus (pip install 'sanasr[teacher]') or a .safetensors checkpoint spandrel recognises (Real-ESRGAN, "
    "SwinIR, HAT, ...). Several methods give one table, a column each.",
)
LQ = typer.Option(None, "--lq", help="Folder of low-quality inputs (with --model, --peer or --rank-checkpoints).")
SAVE_DIR = typer.Option(
    None, "--save-dir", help="Keep the restored images here (default: a temporary folder, removed afterwards)."
)
RANK_CHECKPOINTS = typer.Option(
    None,
    "--rank-checkpoints",
    help="Score every RUN_DIR/checkpoint-*/ of a training run on --lq (and --hr) and print them ranked, best first.",
)
METRIC = typer.Option("musiq", "--metric", help="The one metric that ranks checkpoints.")
METRICS = typer.Option(
    None,
    "--metrics",
    help="Comma-separated metrics (default: psnr,ssim,lpips,dists,"
    "niqe,musiq,maniqa,clipiqa; only no-reference ones without --hr). See --list-metrics.",
)
LIST_METRICS = typer.Option(False, "--list-metrics", help="List the metrics and their exact pyiqa variants.")
PROTOCOL = typer.Option(
    "full", "--protocol", help="full: whole images (sizes must agree); patch: the 256x256 centre crop of both."
)
JSON_OUT = typer.Option(
    None,
    "--json",
    help="Write means, per-image values, variants, protocol and versions to this JSON file ('-': stdout, "
    "instead of the table).",
)
CSV_OUT = typer.Option(None, "--csv", help="Write one row per image to this CSV file.")
SCALE = typer.Option(4.0, "--scale", "-s", min=1.0, help="Upscale factor when a model runs.")
COLOR_FIX = typer.Option(
    "none",
    "--color-fix",
    help="Colour fix when a model runs (--model, --rank-checkpoints): none (default: the paper's "
    "pipeline, as reported), wavelet (`sanasr upscale`'s default), adain.",
)


def eval_command(
    sr: Path = SR,
    hr: Path = HR,
    model: str = MODEL,
    peer: list[str] = PEER,
    lq: Path = LQ,
    save_dir: Path = SAVE_DIR,
    rank_checkpoints: Path = RANK_CHECKPOINTS,
    metric: str = METRIC,
    metrics: str = METRICS,
    list_metrics: bool = LIST_METRICS,
    protocol: str = PROTOCOL,
    json_out: str = JSON_OUT,
    csv_out: Path = CSV_OUT,
    scale: float = SCALE,
    color_fix: str = COLOR_FIX,
    base: str = opt.base("Hub id or local folder of the pretrained SANA base."),
    device: str = opt.device("auto, cpu, cuda, cuda:N (model and metrics)."),
    precision: str = opt.precision("Model precision: auto, fp32, fp16, bf16."),
    seed: int = opt.SEED,
    tagger: str = po.TAGGER,
    tagger_weights: Path = po.TAGGER_WEIGHTS,
    tagger_model: str = po.TAGGER_MODEL,
    tag_vocab: Path = po.TAG_VOCAB,
    template: str = po.TEMPLATE,
    tag_cache: str = po.TAG_CACHE,
    prompt: str = opt.prompt("Extra words put before the tags and the quality template (when a model runs)."),
    full_vae: bool = opt.FULL_VAE,
    keep_text_encoder: bool = opt.KEEP_TEXT_ENCODER,
    vae_decoder: str = opt.VAE_DECODER,
):
    """Score super-resolved images with pyiqa metrics, stating exactly what was computed.

    \b
    sanasr eval --sr results/ --hr gt/                          score existing outputs
    sanasr eval --sr results/ --metrics musiq,niqe              no references: no-reference metrics only
    sanasr eval --sr results/ --hr gt/ --protocol patch --json scores.json --csv per_image.csv
    sanasr eval --model MODEL_DIR --lq lq/ --hr gt/ --save-dir out/   run the model, then score
    sanasr eval --model nano --peer realesrgan-x4plus --peer swinir.safetensors --lq lq/ --hr gt/   side by side
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
        return _print_metrics_list()
    flags = SimpleNamespace(**locals())
    flags.prompt_flags = (tagger, tagger_weights, tagger_model, tag_vocab, template, tag_cache)
    _check_flags(flags)
    flags.dev = resolve_device(device)
    if sr is None:  # a model runs: diffusers and transformers are loaded (scores alone need neither)
        quiet_libraries()
    specs, pairs = _pair_and_parse(flags)
    raise typer.Exit(_rank(flags, pairs, specs[0]) if rank_checkpoints is not None else _eval(flags, pairs, specs))


def _check_flags(f) -> None:
    """Exit 2 on flags that cannot work together, before anything slow."""
    from sanasr_cli.evaluation.metrics import PROTOCOLS
    from sanasr_cli.pipeline.color import COLOR_FIXES

    if f.protocol not in PROTOCOLS:
        raise fail(f"unknown protocol '{f.protocol}'; use one of {', '.join(PROTOCOLS)}", EXIT_USAGE)
    restorers = f.model is not None or bool(f.peer)  # --model and --peer: one mode, several columns
    given = (("--sr", f.sr is not None), ("--model/--peer", restorers), ("--rank-checkpoints", f.rank_checkpoints))
    modes = [m for m, value in given if value not in (None, False)]
    if len(modes) != 1:
        raise fail(
            "give exactly one of --sr DIR (score outputs), --model M and/or --peer P (run restorers on --lq) or "
            "--rank-checkpoints RUN_DIR" + (f"; got {' and '.join(modes)}" if modes else ""),
            EXIT_USAGE,
        )
    if (restorers or f.rank_checkpoints) and f.lq is None:
        named = [flag for flag, value in (("--model", f.model), ("--peer", f.peer)) if value] or modes  # as given
        raise fail(f"{'/'.join(named)} needs --lq (the low-quality inputs)", EXIT_USAGE)
    if not math.isfinite(f.scale):
        raise fail(f"--scale must be a finite number, not {f.scale}", EXIT_USAGE)
    if f.color_fix not in COLOR_FIXES:
        raise fail(f"--color-fix takes {', '.join(COLOR_FIXES)}, not '{f.color_fix}'", EXIT_USAGE)


def _pair_and_parse(f):
    """(metric specs, pairs) from the flags; a bad metric, folder or --save-dir: exit 2."""
    from sanasr_cli.errors import SanaSRError
    from sanasr_cli.evaluation.metrics import DEFAULT_METRICS, METRICS, parse_metrics
    from sanasr_cli.evaluation.model_eval import check_save_dir
    from sanasr_cli.evaluation.pairing import pair_folders

    reference = f.hr is not None
    try:
        if f.rank_checkpoints is not None:
            specs = parse_metrics([f.metric], need_reference=reference)
            pairs = pair_folders(f.lq, f.hr, sr_what="--lq")
        else:
            default = DEFAULT_METRICS if reference else [m for m in DEFAULT_METRICS if METRICS[m].mode == "NR"]
            specs = parse_metrics(f.metrics or list(default), need_reference=reference)
            scored = ("--sr", f.sr) if f.sr is not None else ("--lq", f.lq)
            pairs = pair_folders(scored[1], f.hr, sr_what=scored[0])
        if f.save_dir is not None:
            check_save_dir(f.save_dir, f.lq, f.hr, f.sr)
    except SanaSRError as e:
        raise fail(str(e), EXIT_USAGE) from None
    # before any scoring, and after pairing: a report may not be one of the images the run reads either
    check_report_paths(("--json", f.json_out), ("--csv", f.csv_out))
    _say_which_metrics_need_weights(specs)  # before anything is built
    return specs, pairs


def _methods(f) -> list[tuple[str, str, str]]:
    """(label, kind, spec) of each restorer to run (--model first, then each --peer), labels made unique."""
    from sanasr_cli.peers.peer import NAMED_PEERS

    wanted = ([("model", f.model)] if f.model is not None else []) + [("peer", p) for p in f.peer or []]
    methods, seen = [], set()
    for kind, spec in wanted:
        label = spec if (kind == "model" and "/" not in spec) or spec in NAMED_PEERS else Path(spec).stem
        label = label or "model"
        while label in seen:
            label += "+"
        seen.add(label)
        methods.append((label, kind, spec))
    return methods


def _say_which_metrics_need_weights(specs) -> None:
    """One line before anything is built: a metric that needs a download says so, naming what runs offline."""
    from sanasr_cli.evaluation.run import weights_notice

    notice = weights_notice(specs)
    if notice:
        console.print(f"note: {notice}", highlight=False, soft_wrap=True)


def _eval(f, pairs, specs) -> int:
    """run_eval for --sr, or once per restorer (--model, each --peer: loaded one at a time, outputs in
    --save-dir/<label>/ when there are several), then the table(s), notes and report files."""
    methods = _methods(f)
    if len(methods) <= 1:
        label, kind, spec = methods[0] if methods else (None, None, None)
        run = _run_one(f, pairs, specs, kind, spec, f.save_dir)
        return _report_one(f, run, label)
    runs = []
    for label, kind, spec in methods:
        save = Path(f.save_dir) / label if f.save_dir is not None else None
        console.print(f"[bold]{label}[/] ({kind})", highlight=False)
        runs.append((label, _run_one(f, pairs, specs, kind, spec, save)))
        _print_notes(runs[-1][1].result)
    type(console)().print(_comparison_table(runs))
    if f.json_out is not None:
        from sanasr_cli.evaluation.report import protocol_text

        doc = {
            "protocol": f.protocol, "protocol_description": protocol_text(f.protocol),
            "methods": [dict(label=label, **run.report()) for label, run in runs],
        }  # fmt: skip
        _emit_json(f.json_out, doc)
    if f.csv_out is not None:
        console.print("[yellow]note:[/] --csv holds one method's rows: give one --model or --peer with --csv")
    return 0 if all(run.ok for _, run in runs) else EXIT_FAILED


def _run_one(f, pairs, specs, kind, spec, save_dir):
    """run_eval of one restorer (or of --sr's outputs when kind is None); errors as exit codes."""
    from sanasr_cli.errors import SanaSRError
    from sanasr_cli.evaluation.metrics import MetricUnavailable
    from sanasr_cli.evaluation.run import EvalHooks, EvalOptions, run_eval

    options = EvalOptions(specs, f.protocol, f.dev, save_dir)
    try:
        if kind == "model":
            options.model_run = _model_run(f, pairs)
        elif kind == "peer":
            options.peer_run = _peer_run(f, spec)
        return run_eval(pairs, options, EvalHooks(progress=_bar))
    except MetricUnavailable as e:
        raise fail(str(e), EXIT_FAILED) from None
    except SanaSRError as e:  # e.g. sizes that do not fit the protocol, a peer that cannot load
        raise fail(str(e), EXIT_USAGE) from None


def _peer_run(f, spec: str):
    from sanasr_cli.evaluation.run import PeerRun
    from sanasr_cli.peers.peer import load_peer

    dtype = resolve_precision(f.precision, f.dev)
    with console.status(f"loading peer {spec} on {f.dev} ..."):
        peer = load_peer(spec, device=f.dev, dtype=dtype)
    info = {"spec": spec, **peer.describe(), "device": str(f.dev), "precision": str(dtype).replace("torch.", "")}
    return PeerRun(peer, info)


def _comparison_table(runs) -> Table:
    from sanasr_cli.evaluation.report import protocol_text

    first = runs[0][1].result
    table = Table(
        title=f"{len(first.images)} image pairs, {len(runs)} methods", title_justify="left",
        caption=f"protocol {protocol_text(first.protocol)}; means; colour fix: none unless --color-fix",
    )  # fmt: skip
    table.add_column("metric")
    for label, _ in runs:
        table.add_column(label, justify="right")
    table.add_column("better")
    for m in first.metrics:
        cells = []
        for _, run in runs:
            v = run.result.means.get(m.name)
            cells.append("unavailable" if m.name in run.result.unavailable else ("-" if v is None else f"{v:.4f}"))
        table.add_row(m.name, *cells, "lower" if m.lower_better else "higher")
    return table


def _report_one(f, run, label) -> int:
    """The table, notes and report files of one run (--sr, or a single --model / --peer)."""
    _print_notes(run.result)
    if f.json_out != "-":
        pairs_done = len(run.result.images) - len(run.result.failed_images)
        _print_means(run.result, f"{pairs_done} image pairs" + (f" ({label})" if label else ""))
    if f.json_out is not None:
        _emit_json(f.json_out, run.report())
    if f.csv_out is not None:
        from sanasr_cli.evaluation.report import eval_csv
        from sanasr_cli.safe_files import atomic_write

        atomic_write(f.csv_out, eval_csv(run.result))
        console.print(f"CSV written to {f.csv_out}")
    return 0 if run.ok else EXIT_FAILED


def _model_run(f, pairs):
    """--model: load it, pretag the LQ inputs; the ModelRun holds the only reference to the model."""
    from sanasr_cli.evaluation.run import ModelRun

    dtype = resolve_precision(f.precision, f.dev)
    status = f"loading model {f.model} on {f.dev} ..."
    sr_model = load_model_or_fail(f.model, f.dev, dtype, f.base, f.seed, status, f.full_vae, f.vae_decoder)
    if sr_model.description.random_weights:
        console.print(
            f"[yellow]note:[/] '{f.model}' has random (untrained) weights: scores show the pipeline, not SR quality."
        )
    options = _upscale_options(sr_model, f.scale, f.prompt, f.prompt_flags, f.dev, [p.sr for p in pairs], f.color_fix)
    options.keep_text_encoder = f.keep_text_encoder
    info = {
        "spec": f.model, "description": sr_model.description.to_dict(), "scale": f.scale,
        "color_fix": f.color_fix, "device": str(f.dev), "precision": str(dtype).replace("torch.", ""),
    }  # fmt: skip
    return ModelRun(sr_model, options, f.lq, info)


def _print_notes(result) -> None:
    for message in result.unavailable.values():
        console.print(f"[bold red]metric unavailable:[/] {message}", highlight=False, soft_wrap=True)
    for s in result.failed_images:
        console.print(f"[red]failed:[/] {s.error}", highlight=False, soft_wrap=True)
    for note in result.notes:  # metrics scored on images too small for a stable score
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
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


@contextlib.contextmanager
def _bar(label: str, total: int):
    """The eval hooks' progress: a bar per stage; failures printed as they happen."""
    with opt.progress_bar(label) as progress:
        task = progress.add_task("", total=total)

        def on_item(item):
            if label == "score":
                name = Path(item.sr).name
            elif label == "checkpoints":
                name = Path(item.checkpoint).name
                if item.error:
                    progress.console.print(f"[red]failed:[/] {name}: {item.error}", highlight=False, soft_wrap=True)
            else:
                name = Path(item.input).name
                if item.status != "ok":
                    progress.console.print(f"[red]failed:[/] {item.error}", highlight=False, soft_wrap=True)
            progress.update(task, advance=1, description=name)

        yield on_item


def _emit_json(json_out: str, data: dict) -> None:
    """Write the JSON report to a file (atomically), or to stdout for '-'."""
    import json

    from sanasr_cli.evaluation.report import write_json

    if json_out == "-":
        print(json.dumps(data, indent=2, allow_nan=False))
    else:
        write_json(json_out, data)
        console.print(f"JSON written to {json_out}")


def _rank(f, lq_pairs, spec) -> int:
    """run_rank with the flags, then the ranking table (and JSON)."""
    from sanasr_cli.errors import SanaSRError
    from sanasr_cli.evaluation.metrics import MetricUnavailable
    from sanasr_cli.evaluation.run import EvalHooks, EvalOptions, run_rank

    def options_for(m):
        options = _upscale_options(m, f.scale, f.prompt, f.prompt_flags, f.dev, None, f.color_fix)
        options.keep_text_encoder = f.keep_text_encoder
        return options

    options = EvalOptions([spec], f.protocol, f.dev, f.save_dir)
    try:
        run = run_rank(
            f.rank_checkpoints, lq_pairs, f.lq, spec, options, EvalHooks(progress=_bar),
            dtype=resolve_precision(f.precision, f.dev), base=f.base, options_for=options_for, color_fix=f.color_fix,
        )  # fmt: skip
    except MetricUnavailable as e:
        raise fail(str(e), EXIT_FAILED) from None
    except SanaSRError as e:  # e.g. a run folder without checkpoints
        raise fail(str(e), EXIT_USAGE) from None
    if f.json_out != "-":
        type(console)().print(_ranking_table(run))
    if f.json_out is not None:
        _emit_json(f.json_out, run.report())
    return 0 if run.ok else EXIT_FAILED


def _ranking_table(run) -> Table:
    from sanasr_cli.evaluation.report import protocol_text

    spec = run.metric
    table = Table(
        title=f"checkpoints of {run.run_dir} ranked by {spec.name} ({'lower' if spec.lower_better else 'higher'}"
        f" is better), {run.num_images} images",
        title_justify="left",
        caption=f"{spec.variant}; protocol {protocol_text(run.protocol)}",
    )
    for col in ("rank", "checkpoint", "step", spec.name):
        table.add_column(col)
    for s in run.ranked:
        score = f"{s.score:.4f}" if s.score is not None else f"failed: {s.error}"
        table.add_row(str(s.rank or "-"), Path(s.checkpoint).name, str(s.step), score)
    return table


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("eval")(one_line_errors(eval_command))
