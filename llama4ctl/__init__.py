"""llama4ctl: Llama 4 checkpoint toolkit with a streaming, bounded-memory core."""

__version__ = "0.1.0"
