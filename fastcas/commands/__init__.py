"""Sub-commands of the ``fastcas`` CLI; see :mod:`fastcas.cli` for the protocol."""
