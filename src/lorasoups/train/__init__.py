"""Training: skill LoRAs and the DATA-MIX baseline (:mod:`.sft`), training data (:mod:`.data`),
CAT (:mod:`.cat`).

Kept import-light on purpose: ``import lorasoups.train.data`` must not pull in the training loop.
Use ``from lorasoups.train.sft import train_lora`` and ``from lorasoups.train.data import ...``.
"""
