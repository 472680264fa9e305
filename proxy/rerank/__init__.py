"""Reranking: one async interface (`Reranker`), several synchronous backends behind it."""
