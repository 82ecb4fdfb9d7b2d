"""nfaas: a serverless platform for network functions and IoT back-end functions on edge nodes."""

__version__ = "0.1.0"
