"""The `sanasr` command: a thin Typer layer over the library. One module per subcommand."""

from __future__ import annotations

import typer

from sanasr_cli import __version__
from sanasr_cli.cli import bench, degrade, demo, distill, eval, export, merge_lora, prune, train, upscale

app = typer.Typer(
    name="sanasr",
    help=(
        "SANA-SR: one-step diffusion super-resolution (x4) with a compact-latent LinearDiT.\n\n"
        "Start with `sanasr upscale examples/lq -o outputs --model nano` (in a clone: the bundled photos, "
        "offline on a CPU). Offline models: nano, nano-fast (shipped), tiny (untrained, for tests); the default "
        "sana-600m-512 needs its weights from the Hugging Face hub or --base."
    ),
    rich_markup_mode="rich",  # the same on every typer version: a help text writes `\[` for a `[`
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        typer.echo(f"sanasr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    from sanasr_cli.cli.common import one_line_warnings

    one_line_warnings()


upscale.register(app)
degrade.register(app)
merge_lora.register(app)
prune.register(app)
train.register(app)
eval.register(app)
bench.register(app)
distill.register(app)
export.register(app)
demo.register(app)


def main() -> None:
    """The `sanasr` process (console script, `python -m sanasr_cli`): one command, whose model is known here."""
    import sys

    from sanasr_cli.cli.common import skip_peft_unless_an_adapter, skip_the_collection_at_exit

    skip_the_collection_at_exit()
    skip_peft_unless_an_adapter(_the_one_model(sys.argv[1:]))
    app()


def _the_one_model(args: list[str]) -> str | None:
    """The model of `upscale` / `eval --model` (None: another command, several models, or arguments that do not
    parse, which the command itself then reports). Parsed by click, as the command will parse them."""
    if not args or args[0] not in ("upscale", "eval"):
        return None
    from typer.main import get_command

    command = get_command(app).commands[args[0]]
    try:
        opts, _, _ = command.make_parser(typer.Context(command)).parse_args(list(args[1:]))
    except Exception:  # noqa: BLE001 - a usage error: the command says it in its own words
        return None
    model = next(p for p in command.params if p.name == "model")
    return None if opts.get("rank_checkpoints") else opts.get("model", model.default)
