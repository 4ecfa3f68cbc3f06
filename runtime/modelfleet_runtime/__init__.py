"""ModelFleet's data plane: a batching ONNX inference server, its trainer and its demo model.

Importing this package pulls in nothing heavy; the server's modules import
onnxruntime and FastAPI themselves.
"""

__version__ = "0.1.0"
