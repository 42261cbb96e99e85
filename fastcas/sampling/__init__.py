"""Which sample comes next: recipe weights, the exact weighted sampler, the streaming sampler and the stream geometry
that makes resume elastic. Imports only fastcas.core."""
