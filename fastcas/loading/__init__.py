"""Samples into batches: LoaderConfig, the Loader, the external source, the DALI graph (the only DALI importer), DALI
workers, faults, the plan / runner / finisher / producer thread and the torchvision baseline. Imports core, dataset,
sampling, mix."""
