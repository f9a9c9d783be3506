"""Kaiser (God-Kaiser): automation server for El Trabajante ESP32 boards."""

__version__ = "0.1.0"
