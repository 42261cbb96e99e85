"""The end-to-end demo: data (Fashion-MNIST long-tailed shards), tint (the controlled attribute) and run (train,
evaluate, report)."""
