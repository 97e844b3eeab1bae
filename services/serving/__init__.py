"""The serving service: deployments of compressed artifacts behind standard inference protocols
(Open Inference Protocol v2 over gRPC and REST, OpenAI's HTTP API for causal LMs)."""
