"""`theseus export`: a run's weights out as a Hugging Face folder."""

from __future__ import annotations

import click

from theseus.commands.options import _echo, _verbose


@click.command()
@click.argument("run", metavar="RUN", type=click.Path())
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(file_okay=False))
@click.option(
    "--dtype",
    type=click.Choice(["bf16", "f32"]),
    default="f32",
    show_default=True,
    help="the weights' dtype in the folder",
)
@_verbose
def export(run: str, out_dir: str, dtype: str) -> None:
    """Write the model of RUN (a run or checkpoint folder) as a Hugging Face folder OUT_DIR:
    config.json, safetensors (LoRA merged into the base), tokenizer files and chat template."""
    from theseus.inference.export import export_run

    export_run(run, out_dir, dtype=dtype, say=_echo)


COMMANDS = [export]
