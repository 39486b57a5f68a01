"""What crosses between server and clients: typed messages, their safetensors wire format, compression, upload validation.

Runtime-neutral: the embedded runtime and the Flower adapter both encode, decode and validate here.
"""
