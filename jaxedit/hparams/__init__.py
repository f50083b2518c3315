"""Packaged hyperparameter files (see `jaxedit.edit.hparams`)."""
