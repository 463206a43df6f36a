"""``luna-train export``: a run's model as a TorchScript or ONNX file, preprocessing spec inside."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), required=True,
              help="torchscript (torch.jit.load) or onnx (onnxruntime; needs the [export] extra).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The model file to write.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--dataset", default=None,
              help="The store the run trained on (only for a run without preprocessing.json whose store moved).")
def export(run_dir, fmt, out, checkpoint, dataset):
    """Write the run's model as one file: (B, 1, D, H, W) image in [0, 1] -> sigmoid probabilities.

    The preprocessing spec (spacing, HU window, eval scale, input size) and the frozen post-processing
    travel inside: TorchScript extra files / ONNX metadata, keys preprocessing.json and postprocess.json.
    """
    from luna_train.inference.export import export_run

    path = export_run(run_dir, fmt, out, checkpoint, dataset)
    click.echo(f"wrote {path} ({fmt}, {checkpoint} checkpoint of {run_dir})")
