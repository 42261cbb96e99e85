"""Adapters for trainers: :mod:`fastcas.integrations.timm` (``create_dataset`` / ``create_loader``
with timm's argument names) and :mod:`fastcas.integrations.lightning` (a ``LightningDataModule``).
Each imports its trainer library only when used; neither is needed by the rest of fastcas."""
