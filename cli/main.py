"""The `textrec` Typer app: one command per job, each a thin wrapper over the library."""

from __future__ import annotations

import typer

from . import data_cmds, eval_cmd, export_cmd, predict_cmd, synth, train_cmd

app = typer.Typer(
    name="textrec",
    help="Scene text recognition: CRNN with refined-gate recurrent layers and CTC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

app.command("create-lmdb")(data_cmds.create_lmdb)
app.command("train")(train_cmd.train)
app.command("eval")(eval_cmd.evaluate)
app.command("predict")(predict_cmd.predict)
app.command("export")(export_cmd.export)
app.command("synth")(synth.synth)
app.command("samples")(synth.samples)


if __name__ == "__main__":
    app()
