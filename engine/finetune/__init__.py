"""Fine-tuning a pmtl model on the user's corrected labels (``python -m engine.finetune``, QGIS ``pmtl:finetune``)."""
