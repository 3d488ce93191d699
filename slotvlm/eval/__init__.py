"""Zero-shot video QA evaluation: data loaders, batched prediction, the LLM judge."""
