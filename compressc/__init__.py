"""compressc: an ahead-of-time compiler for DeepSeek-V4 KV-compressor GPU kernels."""

__version__ = "0.1.0"
