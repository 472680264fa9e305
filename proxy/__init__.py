"""rerank-proxy: a transparent reranking proxy for Elasticsearch and OpenSearch."""

__version__ = "0.1.0"
