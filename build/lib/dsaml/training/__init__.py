"""Lightning training: the DSAML LightningModule, evaluation protocols, callbacks, results files."""
