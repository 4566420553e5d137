"""The measuring tools: `tandem bench` (workloads, load generation, summaries, reports and
plots), `tandem microbench` and `tandem fuzz`. Installed with the `tools` extra; the tests run
them only on tiny workloads, to check that they work, never to judge a figure."""
