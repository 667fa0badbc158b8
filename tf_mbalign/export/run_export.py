"""Exporting what an alignment run trained: from a run in memory (the
end-of-run `ExportCallback` the training binary plugs in) or from its
checkpoints (`python -m tf_mbalign.export`). Both go through
`export_aligned_encoder`, so an export carries the run's pooling, layer and
sequence length either way.
"""

import os

from tf_mbalign.export import encoder_export
from tf_mbalign.training.callbacks import TrainingCallback


def export_aligned_encoder(config, tokenizer, aligner, export_dir, source,
                           serving_name="tf_mbalign", precision=None):
    """Writes every export of `aligner.encoder` (see `encoder_export.py`) with
    the sentence representation `config` (a `TrainConfig`) trained, computing
    under `precision` (default: `config.export_precision`, float32 unless the
    run asked otherwise, whatever policy it trained under); returns their
    paths."""
    return encoder_export.export_encoder(
        aligner.encoder, tokenizer, export_dir, mlm_head=aligner.mlm_head,
        pooling=config.pooling, representation_layer=config.representation_layer,
        seq_length=config.max_seq_length, serving_name=serving_name, source=source,
        precision=precision or config.export_precision,
    )


class ExportCallback(TrainingCallback):
    """Exports the aligned encoder when a run finishes (chief only).

    Args:
        export_dir: where to write (default: `model_dir/export`).
    """

    def __init__(self, export_dir=None):
        self.export_dir = export_dir
        self.paths = None

    def on_run_end(self, run):
        export_dir = self.export_dir or os.path.join(run.config.model_dir, "export")
        if run.chief:
            self.paths = export_aligned_encoder(run.config, run.bundle.tokenizer, run.aligner,
                                                export_dir, source=run.bundle.source)
        self.export_dir = export_dir
