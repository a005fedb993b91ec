"""compressc inside other frameworks: `compressc.integrations.vllm` (vLLM's DeepSeek-V4 compressor).

Nothing here is imported by the rest of compressc, and nothing here imports cutlass.
"""
