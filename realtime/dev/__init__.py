"""For development and benchmarks only: the embedded pouchdb-server and the benchmark hook."""
