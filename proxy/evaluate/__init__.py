"""`rerank-proxy eval`: measure what reranking does on your own judged queries.

The package compares the engine's own order with the proxy's reranked order on the same
queries and the same index, with standard IR measures. Layers, bottom up:

    errors                   the exception tree (InputError, UsageError, ClusterError)
    judgments  rankeval      judged queries: BEIR, TREC topics + qrels, a `_rank_eval` body
    searches   metrics       the search each query sends; ir_measures, significance, latency
    runner                   HTTP: searches, which judged documents exist, template rendering
    proxies    loader        a running proxy's model, an in-process proxy; `--load` (_bulk)
    report     plots         report.json, report.md, TREC runs and qrels; PNG plots
    pipeline                 one run from start to end
    cli                      `add_parser(subparsers)`, `run(args)`

Nothing here is imported by `rerank-proxy serve`, and the heavy libraries (ir_measures,
matplotlib, tqdm, scipy) are imported inside functions only.
"""
