"""Samples into batches: LoaderConfig, the Loader, the external source, the DALI graph (the only DALI importer), DALI
workers, faults, prefetch and the torchvision baseline. Imports core, dataset, sampling, mix."""
