"""The papers' comparisons with trained models and paired-by-seed statistics (``fastcas reproduce``)."""
