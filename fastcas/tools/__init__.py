"""Programs built on the library: the benchmark, the end-to-end demo and the self-test. Imports the library layers;
never imported by them."""
